"""Batch norm of a bf16 activation (autocast): statistics in float32 from torch's batch-norm kernels,
no float32 copy of the activation, and the same global statistics over 2 gloo ranks as over 1."""
import os

import pytest
import torch
import torch.distributed as dist
from torch.profiler import profile

from enformer_train.distributed import teardown
from enformer_train.model.ops import BatchNormFunction, batch_norm
from model_helpers import free_port, spawn_ranks

EPS = 1e-5


def _inputs(batch=4, channels=16, length=300):
    g = torch.Generator().manual_seed(5)
    # the halves of the batch have different means, so that one rank's moments are not the batch's
    x = torch.randn(batch, channels, length, generator=g, dtype=torch.float64) * 2 + 0.7
    x[batch // 2:] += torch.linspace(-3, 3, channels, dtype=torch.float64)[:, None]
    weight = torch.rand(channels, generator=g, dtype=torch.float64) + 0.5
    bias = torch.randn(channels, generator=g, dtype=torch.float64)
    grad = torch.randn(batch, channels, length, generator=g, dtype=torch.float64)
    return x.to(torch.bfloat16), weight, bias, grad


def _half(x, weight, bias, grad, gelu, world=1):
    x = x.clone().requires_grad_()
    weight, bias = weight.float().requires_grad_(), bias.float().requires_grad_()
    y, mean, var = batch_norm(x, weight, bias, EPS, gelu, world)
    y.backward(grad.to(torch.bfloat16))
    return {"y": y.detach(), "mean": mean, "var": var, "x": x.grad, "weight": weight.grad, "bias": bias.grad}


def _reference(x, weight, bias, grad, gelu):
    """The float32 path's mathematics in float64, of the same bf16-rounded input."""
    x = x.double().requires_grad_()
    weight, bias = weight.clone().requires_grad_(), bias.clone().requires_grad_()
    y, mean, var = BatchNormFunction.apply(x, weight, bias, EPS, gelu, 1)
    y.backward(grad)
    return {"y": y.detach(), "mean": mean, "var": var, "x": x.grad, "weight": weight.grad, "bias": bias.grad}


def _relative(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("gelu", [False, True], ids=["batchnorm", "batchnorm-gelu"])
def test_bf16_batch_norm_keeps_float32_statistics(gelu):
    x, weight, bias, grad = _inputs()
    got, want = _half(x, weight, bias, grad, gelu), _reference(x, weight, bias, grad, gelu)
    assert got["y"].dtype == got["x"].dtype == torch.bfloat16
    assert got["mean"].dtype == got["var"].dtype == got["weight"].dtype == torch.float32
    # the moments are float32 sums of the bf16 input (measured: 4e-8 and 1e-7)
    assert _relative(got["mean"], want["mean"]) < 1e-6 and _relative(got["var"], want["var"]) < 1e-6
    # outputs and gradients to bf16's precision (2^-8 = 3.9e-3 a rounding; measured 1.6e-3 to 5.2e-3,
    # GELU's forward and backward each rounding several times in bf16)
    for key in ("y", "x", "weight", "bias"):
        assert _relative(got[key], want[key]) < 1e-2, key


def test_bf16_batch_norm_makes_no_float32_copy_of_the_activation():
    x, weight, bias, grad = _inputs()
    x = x.requires_grad_()
    weight, bias = weight.float().requires_grad_(), bias.float().requires_grad_()
    grad = grad.to(torch.bfloat16)
    with profile(record_shapes=True) as prof:
        y, _, _ = batch_norm(x, weight, bias, EPS, True, 1)
        y.backward(grad)
    casts = [e for e in prof.events() if e.name in ("aten::_to_copy", "aten::copy_")]
    big = [e.name for e in casts if any(list(s) == list(x.shape) for s in e.input_shapes if s)]
    assert big == [] and y.dtype == torch.bfloat16
    # what the float32 path does to the same activation: copies forth and back
    with profile(record_shapes=True) as prof:
        y = BatchNormFunction.apply(x.float(), weight, bias, EPS, True, 1)[0].to(torch.bfloat16)
        y.backward(grad)
    big = [e.name for e in prof.events() if e.name == "aten::_to_copy"
           and any(list(s) == list(x.shape) for s in e.input_shapes if s)]
    assert len(big) == 4


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        x, weight, bias, grad = _inputs()
        share = slice(rank * x.shape[0] // world, (rank + 1) * x.shape[0] // world)
        got = {gelu: _half(x[share], weight, bias, grad[share], gelu, world) for gelu in (False, True)}
        torch.save(got, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        teardown()


@pytest.mark.slow
@pytest.mark.distributed
def test_bf16_batch_norm_on_two_ranks_equals_one_rank_with_the_whole_batch(tmp_path):
    spawn_ranks(_worker, (2, free_port(), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in range(2)]
    x, weight, bias, grad = _inputs()
    for gelu in (False, True):
        whole = _half(x, weight, bias, grad, gelu)
        halves = [r[gelu] for r in ranks]
        for r in halves:  # global moments: float32 moments of each half, summed in float64
            assert _relative(r["mean"], whole["mean"]) < 1e-6 and _relative(r["var"], whole["var"]) < 1e-6
        # a batch-norm weight's gradient: the local parts add up to the whole batch's
        for key in ("weight", "bias"):
            assert _relative(halves[0][key] + halves[1][key], whole[key]) < 1e-5, key
        # y and the input gradient: the same to a bf16 rounding here and there (the moments differ
        # in float32's last bits, the input gradient takes a per-channel correction in bf16)
        for key in ("y", "x"):
            assert _relative(torch.cat([r[key] for r in halves]), whole[key]) < 4e-3, key
        # and far from what one rank's own moments would give
        local = _half(x[:2], weight, bias, grad[:2], gelu)
        assert _relative(local["y"], whole["y"][:2]) > 0.1 and _relative(local["x"], whole["x"][:2]) > 0.1
