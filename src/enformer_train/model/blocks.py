"""The convolutional building blocks of Enformer, initialised as Sonnet initialises them."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .batchnorm import CrossReplicaBatchNorm
from .ops import softmax_pool_pairs

# Sonnet's VarianceScaling with a truncated normal divides by the stddev of a unit normal truncated
# to [-2, 2], so the truncated distribution has the intended variance.
_TRUNCATED_STDDEV = 0.87962566103423978


def truncated_normal_(tensor: torch.Tensor, std: float) -> torch.Tensor:
    """Normal(0, std) truncated at two standard deviations: Sonnet's TruncatedNormal."""
    return nn.init.trunc_normal_(tensor, mean=0.0, std=std, a=-2 * std, b=2 * std)


def variance_scaling_(tensor: torch.Tensor, fan_in: int, scale: float = 2.0) -> torch.Tensor:
    """Sonnet VarianceScaling(scale, 'fan_in', 'truncated_normal')."""
    return truncated_normal_(tensor, math.sqrt(scale / fan_in) / _TRUNCATED_STDDEV)


def init_sonnet_linear(layer: nn.Linear | nn.Conv1d) -> None:
    """snt.Linear / snt.Conv1D defaults: weights TruncatedNormal(1/sqrt(fan_in)), biases zero."""
    fan_in = layer.weight[0].numel()
    truncated_normal_(layer.weight, 1.0 / math.sqrt(fan_in))
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def gelu(x: torch.Tensor) -> torch.Tensor:
    """The reference's GELU approximation: sigmoid(1.702 x) * x."""
    return torch.sigmoid(1.702 * x) * x


class ConvBlock(nn.Module):
    """BatchNorm -> GELU -> Conv1D (same padding). [batch, channels_in, length] -> [batch, filters, length]."""

    def __init__(self, channels_in: int, filters: int, width: int, config) -> None:
        super().__init__()
        self.norm = CrossReplicaBatchNorm(channels_in, decay=config.batchnorm_decay, eps=config.batchnorm_eps,
                                          cross_replica=config.cross_replica_batchnorm, gelu=True)
        self.conv = nn.Conv1d(channels_in, filters, width, padding=width // 2)
        init_sonnet_linear(self.conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.norm(x))  # the norm applies the GELU


class Residual(nn.Module):
    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.module(x)


class SoftmaxPooling(nn.Module):
    """Pool pairs of positions with per-channel softmax weights. [batch, channels, length] -> length / 2.

    The logits come from a bias-free linear layer over channels initialised to 2 x identity, so at
    initialisation it leans towards max pooling.
    """

    def __init__(self, channels: int, w_init_scale: float = 2.0) -> None:
        super().__init__()
        # weight[out, in], applied over the channel axis
        self.weight = nn.Parameter(torch.eye(channels) * w_init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 2:
            raise ValueError(f"softmax pooling needs an even length, got {x.shape[-1]}")
        return softmax_pool_pairs(x, self.weight.to(x.dtype))


class MaxPooling(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool1d(x, 2)


def pooling(kind: str, channels: int) -> nn.Module:
    return SoftmaxPooling(channels) if kind == "attention" else MaxPooling()


class ConvTowerBlock(nn.Module):
    """conv_block(width) -> residual pointwise conv_block -> pool: one halving of the length."""

    def __init__(self, channels_in: int, filters: int, width: int, config) -> None:
        super().__init__()
        self.conv = ConvBlock(channels_in, filters, width, config)
        self.pointwise = Residual(ConvBlock(filters, filters, 1, config))
        self.pool = pooling(config.pooling, filters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.pointwise(self.conv(x)))


class Stem(nn.Module):
    """Conv1D(channels / 2, 15) -> residual pointwise conv_block -> pool. [b, 4, L] -> [b, c/2, L/2]."""

    def __init__(self, config) -> None:
        super().__init__()
        half = config.channels // 2
        self.conv = nn.Conv1d(4, half, config.stem_kernel_size, padding=config.stem_kernel_size // 2)
        init_sonnet_linear(self.conv)
        self.pointwise = Residual(ConvBlock(half, half, 1, config))
        self.pool = pooling(config.pooling, half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.pointwise(self.conv(x)))
