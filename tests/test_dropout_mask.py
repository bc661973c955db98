"""The attention's dropout mask in a compiled graph on the CPU (model/ops.py gap_mask): Bernoulli
draws made as the gaps between the dropped positions."""
import math

import pytest
import torch

from enformer_train.model.ops import dropout_mask, gap_mask


@pytest.mark.parametrize("rate", [0.05, 0.3, 0.7])
def test_gap_mask_is_bernoulli(rate):
    """Over 400,000 draws: the share of True, of True pairs of neighbours (independence) and of True
    among the last 2,000 positions (the draws reach the end) within 5 standard deviations of rate,
    rate^2 and rate."""
    n = 400_000
    torch.manual_seed(11)
    mask = gap_mask(n, rate)
    assert mask.shape == (n,) and mask.dtype == torch.bool

    def within(observed: float, p: float, count: int) -> bool:
        return abs(observed - p) < 5 * math.sqrt(p * (1 - p) / count)

    assert within(mask.double().mean().item(), rate, n)
    pairs = (mask[:-1] & mask[1:]).double().mean().item()
    assert within(pairs, rate**2, n // 2)  # neighbouring pairs overlap: counted as half as many independent ones
    assert within(mask[-2000:].double().mean().item(), rate, 2000)


@pytest.mark.parametrize("rate", [0.05, 0.5, 0.95])
def test_gap_mask_drawn_in_batches_is_the_same_mask(rate):
    """The gaps are drawn in batches until they pass the end: batches of 37 gaps consume the same
    uniforms in the same order as one batch, so they must give the very same mask; above 0.5 the
    mask is the complement of the mask at 1 - rate from the same draws."""
    torch.manual_seed(3)
    whole = gap_mask(100_000, rate)
    torch.manual_seed(3)
    batched = gap_mask(100_000, rate, draws=37)
    assert torch.equal(whole, batched)
    if rate > 0.5:
        torch.manual_seed(3)
        assert torch.equal(whole, ~gap_mask(100_000, 1 - rate))


def test_dropout_mask_operator_is_a_function_of_its_seed():
    """The compiled graph's operator: the seed decides the mask (gap_mask from a generator seeded
    with it), whatever torch's own generator holds."""
    like = torch.empty(2, 3, 40, 40)
    seed = torch.tensor(12345)
    torch.manual_seed(0)
    first = torch.ops.enformer_train.dropout_mask(like, seed, 0.05)
    torch.manual_seed(1)
    again = torch.ops.enformer_train.dropout_mask(like, seed, 0.05)
    other = torch.ops.enformer_train.dropout_mask(like, torch.tensor(12346), 0.05)
    expected = gap_mask(like.numel(), 0.05, generator=torch.Generator().manual_seed(12345)).view(like.shape)
    assert first.shape == like.shape and first.dtype == torch.bool
    assert torch.equal(first, again) and torch.equal(first, expected) and not torch.equal(first, other)
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        gap_mask(10, 1.0)


def test_eager_keeps_bernoulli():
    """Eager draws the mask as bernoulli_ did (the stream the demo's figures were trained with)."""
    like = torch.empty(2, 3, 40, 40)
    torch.manual_seed(7)
    mask = dropout_mask(like, 0.05)
    torch.manual_seed(7)
    assert torch.equal(mask, torch.empty(2, 3, 40, 40, dtype=torch.bool).bernoulli_(0.05))


def test_compiled_graph_draws_one_mask_per_call():
    """Compiled, two calls with the same arguments draw two masks, as eager does, and the same two
    again from the same seed: each call's seed is drawn by a random operator, which a compiled
    graph never merges (equal expressions of a training graph are merged into one)."""
    from enformer_train.model.ops import attend

    def two_masks(x):
        return dropout_mask(x, 0.3), dropout_mask(x, 0.3)

    def two_attentions(logits, v):
        return attend(logits, v, 0.3, True) - attend(logits, v, 0.3, True)

    x = torch.zeros(4, 64, 64)
    eager = two_masks(x)
    assert not torch.equal(eager[0], eager[1])
    compiled = torch.compile(two_masks, fullgraph=True)
    torch.manual_seed(4)
    first = compiled(x)
    torch.manual_seed(4)
    again = compiled(x)
    assert not torch.equal(first[0], first[1])
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert 0.25 < first[0].double().mean() < 0.35

    logits = torch.randn(2, 3, 32, 32, requires_grad=True)
    v = torch.randn(2, 3, 32, 8, requires_grad=True)
    difference = torch.compile(two_attentions, fullgraph=True)(logits, v)
    assert difference.abs().amax() > 0.1  # two masks: 0 everywhere if one mask served both
    difference.sum().backward()
    assert logits.grad.abs().amax() > 0


@pytest.mark.parametrize("compiled", [False, True])
def test_checkpointed_attention_backward_uses_the_forward_mask(compiled):
    """Under activation checkpointing the attention is recomputed in the backward: its mask must be
    the forward's (eager: the generator's state is restored; compiled: the operator is random, so
    the partitioner keeps it). With v the identity the output is the dropped-out weights themselves,
    so the gradient of v must be output^T @ grad."""
    from torch.utils.checkpoint import checkpoint

    from enformer_train.model.ops import attend

    def f(logits, v):
        return checkpoint(lambda a, b: attend(a, b, 0.3, True), logits, v, use_reentrant=False)

    fn = torch.compile(f, fullgraph=True) if compiled else f
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 32, 32, requires_grad=True)
    v = torch.eye(32).expand(2, 3, 32, 32).clone().requires_grad_()
    grad = torch.randn(2, 3, 32, 32)
    out = fn(logits, v)
    out.backward(grad)
    assert 0.2 < (out == 0).double().mean().item() < 0.4  # 6,144 weights dropped at 0.3
    torch.testing.assert_close(v.grad, out.detach().transpose(-1, -2) @ grad)
