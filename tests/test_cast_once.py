"""Under bf16 autocast each block's weights are cast in one operation and their gradients back in
one (model.ops.CastOnce), instead of autocast's cast of every weight and every gradient: the same
numbers bit for bit, and two casts per block each way."""
import collections

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from enformer_train.model.enformer import _cast_weights, build_model
from enformer_train.model.lora import add_lora
from enformer_train.model.ops import softmax_pool_pairs
from enformer_train.train.loss import poisson_loss
from model_helpers import randomise_, tiny_config


class _Casts(TorchDispatchMode):
    """Counts the step's casts (aten::_to_copy): ('weight', from, to) for a tensor of a weight's
    shape, ('flat', from, to) for a 1-d tensor as long as all the cast weights of one block."""

    def __init__(self, model):
        super().__init__()
        self.shapes = {tuple(p.shape) for p in model.parameters() if p.dim() >= 2}
        self.flat = {sum(p.numel() for p in _cast_weights(block).values()) for block in _blocks(model)}
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket.__name__ == "_to_copy" and args[0].dtype != out.dtype:
            kind = ("weight" if tuple(out.shape) in self.shapes
                    else "flat" if out.dim() == 1 and out.numel() in self.flat else "other")
            self.counts[(kind, str(args[0].dtype)[6:], str(out.dtype)[6:])] += 1
        return out


def _model(checkpointing=False, lora=False):
    torch.manual_seed(0)
    config = tiny_config(sequence_length=2048, target_length=8, gradient_checkpointing=checkpointing)
    model = build_model(config).train()
    randomise_(model)
    if lora:
        add_lora(model, 2, ["attention.q", "mlp_linear1"])
        for name, p in model.named_parameters():
            p.requires_grad_(".lora_" in name or name.startswith("heads."))
        with torch.no_grad():  # B starts at zero; make the adapters count
            for name, p in model.named_parameters():
                if name.endswith("lora_b"):
                    p.normal_(0, 0.1)
    return model


def _step(model, once, mode=None):
    """One bf16 training step of the whole batch: (predictions, loss, {name: gradient})."""
    model.cast_weights_once = once
    torch.manual_seed(1)  # the same dropout masks on both paths
    g = torch.Generator().manual_seed(2)
    codes = torch.randint(0, 4, (3, model.config.sequence_length), generator=g, dtype=torch.uint8)
    target = torch.rand(3, model.config.target_length, 5, generator=g)
    with mode or torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            pred = model(codes, head="human")
        loss = poisson_loss(pred, target)
        loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return pred.detach(), loss.detach(), grads


def _blocks(model):
    return [model.stem, *model.conv_tower, *model.transformer, model.final_pointwise]


@pytest.mark.parametrize("checkpointing,lora", [(False, False), (True, False), (False, True)],
                         ids=["plain", "checkpointing", "lora"])
def test_cast_once_gives_autocasts_numbers_bit_for_bit(checkpointing, lora):
    model = _model(checkpointing, lora)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    per_weight = _step(model, once=False)
    model.load_state_dict(state)  # the step moved the batch norms' averages
    once = _step(model, once=True)
    assert torch.equal(per_weight[0], once[0]) and torch.equal(per_weight[1], once[1])
    assert per_weight[2].keys() == once[2].keys()
    expected = {n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("heads.mouse")}
    assert set(once[2]) == expected  # LoRA: the frozen base weights get no gradient
    for name in per_weight[2]:
        assert once[2][name].dtype == torch.float32, name
        assert torch.equal(per_weight[2][name], once[2][name]), name


def test_cast_once_casts_each_block_once_each_way():
    model = _model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    counts = {}
    for once in (False, True):
        model.load_state_dict(state)
        mode = _Casts(model)
        _step(model, once, mode)
        counts[once] = mode.counts
    weights = sum(1 for name, p in model.named_parameters() if p.dim() >= 2 and not name.startswith("heads."))
    # autocast: every trunk weight of 2 or more dimensions cast to bf16 and its gradient back
    assert counts[False][("weight", "float32", "bfloat16")] == weights
    assert counts[False][("weight", "bfloat16", "float32")] == weights
    # cast once: no weight cast on its own; one flat cast per block each way
    blocks = len(_blocks(model))
    assert counts[True][("weight", "float32", "bfloat16")] == counts[True][("weight", "bfloat16", "float32")] == 0
    assert counts[True][("flat", "float32", "bfloat16")] == blocks
    assert counts[True][("flat", "bfloat16", "float32")] == blocks
    assert sum(counts[True].values()) <= sum(counts[False].values()) / 2


def test_cast_once_is_off_where_autocast_is():
    model = _model()
    mode = _Casts(model)
    with mode:
        model(torch.randint(0, 4, (1, model.config.sequence_length), dtype=torch.uint8), head="human").sum().backward()
    assert mode.counts  # float64 sums of the batch norms and the positional features are cast
    assert all(kind == "other" and "bfloat16" not in (a, b) for kind, a, b in mode.counts)


def test_softmax_pooling_backward_is_the_same_for_any_weight():
    """torch.matmul picks its kernel by whether the weight requires grad; the pooling's backward
    writes its product out, so a parameter, a detached copy and a view round alike."""
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(2, 48, 600, generator=g).to(torch.bfloat16)
    grad = torch.randn(2, 48, 300, generator=g).to(torch.bfloat16)
    weight = torch.nn.Parameter(torch.eye(48) * 2 + torch.randn(48, 48, generator=g) * 0.1)
    results = []
    for w in (weight.to(torch.bfloat16), weight.detach().to(torch.bfloat16),
              torch.cat([torch.zeros(7), weight.detach().reshape(-1)]).to(torch.bfloat16)[7:].view(48, 48)):
        x = x0.clone().requires_grad_()
        softmax_pool_pairs(x, w).backward(grad)
        results.append(x.grad)
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])
