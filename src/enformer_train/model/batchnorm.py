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


class _GlobalBatchNorm(torch.autograd.Function):
    """y = (x - mean) / sqrt(var + eps) * weight + bias with mean and var over all ranks' batches.

    x: [batch, channels, length] float32. Forward all-reduces (sum x, sum x^2, count) in float64;
    backward all-reduces (sum dy, sum dy * x_hat), so each rank's input gradient is that of the
    sum of all ranks' losses, exactly as one process holding the whole batch.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        channels = x.shape[1]
        x64 = x.double()
        local = torch.cat([
            x64.sum(dim=(0, 2)),
            (x64 * x64).sum(dim=(0, 2)),
            torch.tensor([x.shape[0] * x.shape[2]], dtype=torch.float64, device=x.device),
        ])
        dist.all_reduce(local)
        count = local[-1]
        mean = local[:channels] / count
        var = (local[channels:2 * channels] / count - mean * mean).clamp_min(0.0)
        invstd = torch.rsqrt(var + eps)
        mean_x, invstd_x = mean.to(x.dtype), invstd.to(x.dtype)
        y = (x - mean_x[None, :, None]) * (invstd_x * weight)[None, :, None] + bias[None, :, None]
        ctx.save_for_backward(x, weight, mean_x, invstd_x)
        ctx.count = count
        mean, var = mean.to(x.dtype), var.to(x.dtype)
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, grad_y, _grad_mean, _grad_var):
        x, weight, mean, invstd = ctx.saved_tensors
        channels = x.shape[1]
        x_hat = (x - mean[None, :, None]) * invstd[None, :, None]
        local_sum_dy = grad_y.sum(dim=(0, 2), dtype=torch.float64)
        local_sum_dy_xhat = (grad_y * x_hat).sum(dim=(0, 2), dtype=torch.float64)
        sums = torch.cat([local_sum_dy, local_sum_dy_xhat])
        dist.all_reduce(sums)
        mean_dy = (sums[:channels] / ctx.count).to(x.dtype)
        mean_dy_xhat = (sums[channels:] / ctx.count).to(x.dtype)
        grad_x = (grad_y - mean_dy[None, :, None] - x_hat * mean_dy_xhat[None, :, None]) * (
            weight * invstd)[None, :, None]
        # Parameter gradients stay local: the data-parallel wrapper all-reduces them like any other.
        return grad_x, local_sum_dy_xhat.to(weight.dtype), local_sum_dy.to(weight.dtype), None


class CrossReplicaBatchNorm(nn.Module):
    """Batch norm over channels of [batch, channels, length], statistics of the global batch.

    Training: normalise with the batch's biased mean and variance (of all ranks when
    torch.distributed has more than one and `cross_replica` is on), then update debiased
    exponential moving averages: average_i = average_{i-1} + (value - average_{i-1}) *
    (1 - decay) / (1 - decay^i), which is Sonnet's hidden / (1 - decay^i) written on the average.
    Evaluation: normalise with the moving averages.
    """

    def __init__(self, num_features: int, decay: float = 0.9, eps: float = 1e-5, cross_replica: bool = True):
        super().__init__()
        self.decay, self.eps, self.cross_replica = decay, eps, cross_replica
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = at_least_float32(x)  # statistics in float32 even under autocast
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                training=False, eps=self.eps).to(dtype)
        if self.cross_replica and _distributed_world() > 1:
            y, mean, var = _GlobalBatchNorm.apply(x, self.weight, self.bias, self.eps)
        else:
            y = F.batch_norm(x, None, None, self.weight, self.bias, training=True, eps=self.eps)
            if getattr(_state, "frozen", False):
                return y.to(dtype)
            with torch.no_grad():
                var, mean = torch.var_mean(x, dim=(0, 2), correction=0)
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
                f"cross_replica={self.cross_replica}")
