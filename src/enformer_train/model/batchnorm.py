"""Batch norm as Sonnet's CrossReplicaBatchNorm: global batch statistics on every backend.

torch.nn.SyncBatchNorm refuses CPU tensors and updates its running statistics with the unbiased
variance and a plain momentum; the reference uses the biased variance and debiased exponential
moving averages. This module does what the reference does, over gloo or NCCL alike.
"""
from __future__ import annotations

import contextlib
import threading

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

_state = threading.local()


@contextlib.contextmanager
def frozen_statistics():
    """Within this context, batch norms in training mode do not update their moving averages.

    Activation checkpointing re-runs forward passes during backward; the recomputation must not
    count the batch a second time.
    """
    previous = getattr(_state, "frozen", False)
    _state.frozen = True
    try:
        yield
    finally:
        _state.frozen = previous


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """Upcast half-precision tensors (autocast) to float32; float32 and float64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _distributed_world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


_GELU_SCALE = 1.702


class _BatchNormFunction(torch.autograd.Function):
    """y = act((x - mean) / sqrt(var + eps) * weight + bias), act = identity or sigmoid(1.702 z) z.

    x: [batch, channels, length]. Mean and biased variance are over (batch, length) of this rank,
    or of all ranks (`world` > 1): forward all-reduces (sum x, sum x^2, count) in float64, backward
    (sum dz, sum dz * x_hat), so each rank's input gradient is that of the sum of all ranks' losses,
    exactly as one process holding the whole batch. Only x is kept for backward; the normalised
    values and the activation are recomputed there, which halves what a conv block keeps.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps, gelu, world):
        channels = x.shape[1]
        if world > 1:
            x64 = x.double()
            local = torch.cat([x64.sum(dim=(0, 2)), (x64 * x64).sum(dim=(0, 2)),
                               torch.tensor([x.shape[0] * x.shape[2]], dtype=torch.float64, device=x.device)])
            dist.all_reduce(local)
            count = local[-1]
            mean64 = local[:channels] / count
            var = (local[channels:2 * channels] / count - mean64 * mean64).clamp_min(0.0).to(x.dtype)
            mean = mean64.to(x.dtype)
        else:
            count = x.shape[0] * x.shape[2]
            var, mean = torch.var_mean(x, dim=(0, 2), correction=0)
        invstd = torch.rsqrt(var + eps)
        scale = invstd * weight
        z = torch.addcmul((bias - mean * scale)[None, :, None], x, scale[None, :, None])
        y = z.mul_(torch.sigmoid(z * _GELU_SCALE)) if gelu else z
        ctx.save_for_backward(x, weight, bias, mean, invstd)
        ctx.count, ctx.gelu, ctx.world = count, gelu, world
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, grad_y, _grad_mean, _grad_var):
        x, weight, bias, mean, invstd = ctx.saved_tensors
        channels = x.shape[1]
        x_hat = (x - mean[None, :, None]).mul_(invstd[None, :, None])
        if ctx.gelu:
            # d/dz [s(1.702 z) z] = s (1 + 1.702 z (1 - s)), in place to spare allocations
            z = torch.addcmul(bias[None, :, None], x_hat, weight[None, :, None])
            s = torch.sigmoid(z * _GELU_SCALE)
            grad_z = torch.rsub(s, 1).mul_(z).mul_(_GELU_SCALE).add_(1).mul_(s).mul_(grad_y)
            del z, s
        else:
            grad_z = grad_y
        sum_dz = grad_z.sum(dim=(0, 2), dtype=torch.float64)
        sum_dz_xhat = (grad_z * x_hat).sum(dim=(0, 2), dtype=torch.float64)
        # Parameter gradients stay local: the data-parallel wrapper all-reduces them like any other.
        grad_weight, grad_bias = sum_dz_xhat.to(weight.dtype), sum_dz.to(weight.dtype)
        if ctx.world > 1:
            sums = torch.cat([sum_dz, sum_dz_xhat])
            dist.all_reduce(sums)
            sum_dz, sum_dz_xhat = sums[:channels], sums[channels:]
        mean_dz = (sum_dz / ctx.count).to(x.dtype)
        mean_dz_xhat = (sum_dz_xhat / ctx.count).to(x.dtype)
        grad_x = x_hat.mul_(-mean_dz_xhat[None, :, None]).add_(grad_z).sub_(mean_dz[None, :, None]).mul_(
            (weight * invstd)[None, :, None])
        return grad_x, grad_weight, grad_bias, None, None, None


class CrossReplicaBatchNorm(nn.Module):
    """Batch norm over channels of [batch, channels, length], statistics of the global batch.

    Training: normalise with the batch's biased mean and variance (of all ranks when
    torch.distributed has more than one and `cross_replica` is on), then update debiased
    exponential moving averages: average_i = average_{i-1} + (value - average_{i-1}) *
    (1 - decay) / (1 - decay^i), which is Sonnet's hidden / (1 - decay^i) written on the average.
    Evaluation: normalise with the moving averages. With `gelu`, the reference's GELU follows in
    the same function (a conv block's BatchNorm -> GELU).
    """

    def __init__(self, num_features: int, decay: float = 0.9, eps: float = 1e-5, cross_replica: bool = True,
                 gelu: bool = False):
        super().__init__()
        self.decay, self.eps, self.cross_replica, self.gelu = decay, eps, cross_replica, gelu
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = at_least_float32(x)  # statistics in float32 even under autocast
        if not self.training:
            y = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                             training=False, eps=self.eps)
            return (y * torch.sigmoid(_GELU_SCALE * y) if self.gelu else y).to(dtype)
        world = _distributed_world() if self.cross_replica else 1
        y, mean, var = _BatchNormFunction.apply(x, self.weight, self.bias, self.eps, self.gelu, world)
        if not getattr(_state, "frozen", False):
            self._update_averages(mean, var)
        return y.to(dtype)

    @torch.no_grad()
    def _update_averages(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        self.num_batches_tracked += 1
        step = self.num_batches_tracked.double()
        rate = (1.0 - self.decay) / (1.0 - torch.pow(torch.tensor(self.decay, dtype=torch.float64,
                                                                     device=step.device), step))
        self.running_mean.add_((mean - self.running_mean) * rate.to(mean.dtype))
        self.running_var.add_((var - self.running_var) * rate.to(var.dtype))

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[0]}, decay={self.decay}, eps={self.eps}, "
                f"cross_replica={self.cross_replica}, gelu={self.gelu}")
