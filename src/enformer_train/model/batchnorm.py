"""Batch norm as Sonnet's CrossReplicaBatchNorm: global batch statistics on every backend.

torch.nn.SyncBatchNorm refuses CPU tensors and updates its running statistics with the unbiased
variance and a plain momentum; the reference uses the biased variance and debiased exponential
moving averages. This module does what the reference does, over gloo or NCCL alike.
"""
from __future__ import annotations

import contextlib
import threading

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed.reduce import PROCESS_GROUP, Reducer, key_of
from .ops import GELU_SCALE, batch_norm, without_autocast

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


class CrossReplicaBatchNorm(nn.Module):
    """Batch norm over channels of [batch, channels, length], statistics of the global batch.

    Training: normalise with the batch's biased mean and variance (of all ranks of `reducer` when
    it has more than one and `cross_replica` is on; by default the process group's), then update debiased
    exponential moving averages: average_i = average_{i-1} + (value - average_{i-1}) *
    (1 - decay) / (1 - decay^i), which is Sonnet's hidden / (1 - decay^i) written on the average.
    Evaluation: normalise with the moving averages. With `gelu`, the reference's GELU follows in
    the same function (a conv block's BatchNorm -> GELU).
    """

    def __init__(self, num_features: int, decay: float = 0.9, eps: float = 1e-5, cross_replica: bool = True,
                 gelu: bool = False):
        super().__init__()
        self.decay, self.eps, self.cross_replica, self.gelu = decay, eps, cross_replica, gelu
        self.use_reducer(PROCESS_GROUP)
        # Frozen (fine-tuning): normalise with the moving averages and keep them, also in training mode.
        self.frozen = False
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))

    def use_reducer(self, reducer: Reducer) -> None:
        """Sum the statistics with `reducer` (a distributed.Reducer): the ranks it spans are the batch."""
        self.reducer, self.reducer_key = reducer, key_of(reducer)  # the key: an int torch.compile can hold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A bf16 or float16 x (autocast) stays in its dtype: torch's batch-norm kernels take it beside
        # float32 parameters and keep the statistics in float32 without a float32 copy of x.
        if not self.training or self.frozen:
            with without_autocast(x.device):
                y = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                 training=False, eps=self.eps)
                return y * torch.sigmoid(GELU_SCALE * y) if self.gelu else y
        world = self.reducer.world_size if self.cross_replica else 1
        y, mean, var = batch_norm(x, self.weight, self.bias, self.eps, self.gelu, world, self.reducer_key)
        if not getattr(_state, "frozen", False):
            self._update_averages(mean, var)
        return y

    @torch.no_grad()
    def _update_averages(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        self.num_batches_tracked.add_(1)  # in place: torch.compile traces no attribute assignment
        step = self.num_batches_tracked.double()
        rate = (1.0 - self.decay) / (1.0 - torch.pow(torch.tensor(self.decay, dtype=torch.float64,
                                                                     device=step.device), step))
        rate = rate.to(mean.dtype)
        self.running_mean.add_((mean - self.running_mean) * rate)
        self.running_var.add_((var - self.running_var) * rate)

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[0]}, decay={self.decay}, eps={self.eps}, "
                f"cross_replica={self.cross_replica}, gelu={self.gelu}" + (", frozen" if self.frozen else ""))
