"""Cross-replica batch norm with real processes over gloo: 2 ranks x half a batch == 1 rank x whole batch,
with the moments summed by gloo's all_reduce and through the host's shared page alike."""
import os

import pytest
import torch
import torch.distributed as dist

from enformer_train import Enformer
from enformer_train.distributed import host_sum, teardown
from model_helpers import free_port, no_dropout, randomise_, spawn_ranks, tiny_config

BATCH = 4


def _inputs():
    g = torch.Generator().manual_seed(7)
    codes = torch.randint(0, 5, (BATCH, 1024), generator=g)
    x = torch.eye(5, 4, dtype=torch.float64)[codes]
    weights = {"human": torch.randn(BATCH, 4, 5, generator=g, dtype=torch.float64),
               "mouse": torch.randn(BATCH, 4, 3, generator=g, dtype=torch.float64)}
    return x, weights


def _step(model, x, weights):
    """One training-mode forward and backward of a per-sample-additive loss (a weighted sum)."""
    x = x.clone().requires_grad_(True)
    out = model(x)
    loss = sum((out[h] * weights[h]).sum() for h in out)
    loss.backward()
    return {h: o.detach() for h, o in out.items()}, x.grad


def _model():
    torch.manual_seed(0)
    model = Enformer(no_dropout(tiny_config())).train()
    randomise_(model, seed=3)
    return model.double()  # float64, so that agreement is checked to 1e-9 rather than float32 noise


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        for how in ("gloo", "page"):
            if how == "page":
                assert host_sum.open_host_sum() == (os.uname().machine in ("x86_64", "AMD64"))
            model = _model()
            x, weights = _inputs()
            share = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
            out, grad_x = _step(model, x[share], {h: w[share] for h, w in weights.items()})
            grads = {n: p.grad.clone() for n, p in model.named_parameters()}
            for g in grads.values():
                dist.all_reduce(g)  # the local parts of the whole-batch gradient add up
            torch.save({"out": out, "grad_x": grad_x, "grads": grads,
                        "buffers": dict(model.named_buffers())}, os.path.join(out_dir, f"{how}{rank}.pt"))
    finally:
        teardown()


@pytest.mark.slow
@pytest.mark.distributed
def test_two_ranks_with_half_batches_equal_one_rank_with_the_whole_batch(tmp_path):
    spawn_ranks(_worker, (2, free_port(), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"page{r}.pt", weights_only=True) for r in range(2)]
    # two ranks' sums through the page are gloo's to the bit (a + b either way)
    for r, page in enumerate(ranks):
        gloo = torch.load(tmp_path / f"gloo{r}.pt", weights_only=True)
        for key in page:
            for name in page[key] if isinstance(page[key], dict) else [None]:
                a, b = (page[key], gloo[key]) if name is None else (page[key][name], gloo[key][name])
                assert torch.equal(a, b), (key, name)

    torch.set_num_threads(1)
    model = _model()
    x, weights = _inputs()
    out, grad_x = _step(model, x, weights)

    for h in out:
        torch.testing.assert_close(torch.cat([r["out"][h] for r in ranks]), out[h], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(torch.cat([r["grad_x"] for r in ranks]), grad_x, rtol=1e-9, atol=1e-9)
    for name, p in model.named_parameters():
        for r in ranks:
            torch.testing.assert_close(r["grads"][name], p.grad, rtol=1e-9, atol=1e-9, msg=name)
    for name, b in model.named_buffers():
        for r in ranks:
            torch.testing.assert_close(r["buffers"][name], b, rtol=1e-9, atol=1e-9, msg=name)
    # the statistics really are global: a rank's own half has different moments
    assert model.stem.pointwise.module.norm.num_batches_tracked.item() == 1
    assert not torch.allclose(ranks[0]["out"]["human"], _local_only(x[:2], weights)["human"], atol=1e-3)


def _local_only(x, weights):
    model = _model()
    out, _ = _step(model, x, {h: w[:2] for h, w in weights.items()})
    return out


class _Twin:
    """A reducer as if a second rank held the very same batch: every sum doubles."""

    world_size = 2

    def __init__(self):
        self.calls = 0

    def sum(self, t):
        self.calls += 1
        return t * 2


def test_an_injected_reducer_is_what_the_batch_norms_sum_with():
    """Enformer.use_reducer: the batch norms sum their statistics with the reducer they are given,
    not the process group (none here). Two ranks holding the same batch normalise and back-propagate
    exactly as one rank with it, so the twin reducer gives the plain model's numbers."""
    torch.manual_seed(0)
    config = no_dropout(tiny_config())
    plain = Enformer(config).double().train()
    twin = Enformer(config).double().train()
    twin.load_state_dict(plain.state_dict())
    reducer = _Twin()
    twin.use_reducer(reducer)
    x = torch.randint(0, 4, (2, config.sequence_length))
    outputs = []
    for model in (plain, twin):
        out = model(x, head="human")
        out.square().sum().backward()
        outputs.append((out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    norms = sum(1 for m in twin.modules() if type(m).__name__ == "CrossReplicaBatchNorm")
    assert reducer.calls == 2 * norms  # moments forward, gradient sums backward: one exchange each
    torch.testing.assert_close(outputs[1][0], outputs[0][0], rtol=1e-12, atol=1e-12)
    assert len(outputs[0][1]) == len(outputs[1][1]) > 50  # the mouse head has no gradient here
    for a, b in zip(outputs[1][1], outputs[0][1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
