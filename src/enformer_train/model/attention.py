"""Multi-head attention with Transformer-XL style relative positions, as in the reference.

Positional features are computed in float64 and cast: the gamma basis loses precision in float32
at long lengths.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .blocks import variance_scaling_


def _exponential(distances: torch.Tensor, num: int, seq_length: int, min_half_life: float = 3.0) -> torch.Tensor:
    max_range = math.log(seq_length) / math.log(2.0)
    half_life = torch.pow(2.0, torch.linspace(min_half_life, max_range, num, dtype=torch.float64))
    return torch.exp(-math.log(2.0) / half_life[None, :] * distances[:, None])


def _central_mask(distances: torch.Tensor, num: int, seq_length: int) -> torch.Tensor:
    center_widths = torch.pow(2.0, torch.arange(1, num + 1, dtype=torch.float64)) - 1
    return (center_widths[None, :] > distances[:, None]).to(torch.float64)


def _gamma(distances: torch.Tensor, num: int, seq_length: int) -> torch.Tensor:
    stddev = seq_length / (2 * num)
    start_mean = seq_length / num
    mean = torch.linspace(start_mean, seq_length, num, dtype=torch.float64)[None, :]
    concentration = (mean / stddev) ** 2
    rate = mean / stddev**2
    x = distances[:, None]
    log_pdf = torch.xlogy(concentration - 1.0, x) - rate * x - (torch.lgamma(concentration)
                                                                  - concentration * torch.log(rate))
    probabilities = torch.exp(log_pdf) + 1e-8
    # Normalised per feature over the positions, as the reference's reduce_max(axis=1) does.
    return probabilities / probabilities.amax(dim=0, keepdim=True)


def positional_features(seq_length: int, num_features: int) -> torch.Tensor:
    """Relative position features for distances -(T-1) .. T-1: [2T - 1, num_features] float64.

    Exponential, central mask and gamma bases on |distance|, each num_features / 6 wide, then the
    same multiplied by sign(distance).
    """
    if num_features % 6:
        raise ValueError(f"num_features must be divisible by 6, got {num_features}")
    distances = torch.arange(-seq_length + 1, seq_length, dtype=torch.float64)
    per_basis = num_features // 6
    symmetric = torch.cat([f(distances.abs(), per_basis, seq_length) for f in (_exponential, _central_mask, _gamma)],
                          dim=-1)
    return torch.cat([symmetric, torch.sign(distances)[:, None] * symmetric], dim=-1)


class _AddRelativeLogits(torch.autograd.Function):
    """content + shift(relative), where shift(r)[..., i, j] = r[..., i, j - i + T - 1].

    The reference shifts by padding, reshaping and slicing, which copies the [T, 2T] logits twice;
    here the shift is a strided view of the [T, 2T - 1] relative logits, read once.
    """

    @staticmethod
    def forward(ctx, content: torch.Tensor, relative: torch.Tensor) -> torch.Tensor:
        relative = relative.contiguous()
        ctx.relative_shape = relative.shape
        return content + _shifted_view(relative)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad_relative = grad.new_zeros(ctx.relative_shape)
        _shifted_view(grad_relative).copy_(grad)
        return grad, grad_relative


def _shifted_view(relative: torch.Tensor) -> torch.Tensor:
    """[..., T, 2T - 1] contiguous -> view [..., T, T] with out[..., i, j] = relative[..., i, j - i + T - 1]."""
    *lead, t, width = relative.shape
    lead_strides = relative.stride()[:-2]
    return relative.as_strided((*lead, t, t), (*lead_strides, width - 1, 1),
                               relative.storage_offset() + t - 1)


class _AttendFunction(torch.autograd.Function):
    """dropout(softmax(logits)) @ v, keeping for backward the softmax and a boolean dropout mask
    only: autograd would also keep the dropped-out copy, the largest tensor of each layer."""

    @staticmethod
    def forward(ctx, logits, v, rate, training):
        p = logits.softmax(dim=-1)
        dropped = None
        weights = p
        if training and rate > 0:
            dropped = torch.empty(p.shape, dtype=torch.bool, device=p.device).bernoulli_(rate)
            weights = p.masked_fill(dropped, 0.0).mul_(1.0 / (1.0 - rate))
        ctx.save_for_backward(p, v, dropped)
        ctx.rate = rate
        return torch.matmul(weights, v)

    @staticmethod
    def backward(ctx, grad):
        p, v, dropped = ctx.saved_tensors
        scale = 1.0 / (1.0 - ctx.rate)
        weights = p if dropped is None else p.masked_fill(dropped, 0.0).mul_(scale)
        grad_v = torch.matmul(weights.transpose(-1, -2), grad)
        del weights
        grad_p = torch.matmul(grad, v.transpose(-1, -2))
        if dropped is not None:
            grad_p.masked_fill_(dropped, 0.0).mul_(scale)
        # softmax backward: p (grad_p - sum(grad_p p))
        row = (grad_p * p).sum(dim=-1, keepdim=True)
        return grad_p.sub_(row).mul_(p), grad_v, None, None


class MultiheadAttention(nn.Module):
    """Relative-position multi-head attention. [batch, T, channels] -> [batch, T, heads x value_size]."""

    def __init__(self, config) -> None:
        super().__init__()
        c, h, k, v = config.channels, config.num_heads, config.key_size, config.value_size
        f = config.num_relative_position_features
        self.num_heads, self.key_size, self.num_features = h, k, f
        self.q = nn.Linear(c, h * k, bias=False)
        self.k = nn.Linear(c, h * k, bias=False)
        self.v = nn.Linear(c, h * v, bias=False)
        self.r_k = nn.Linear(f, h * k, bias=False)
        self.r_w_bias = nn.Parameter(torch.empty(1, h, 1, k))
        self.r_r_bias = nn.Parameter(torch.empty(1, h, 1, k))
        self.output = nn.Linear(h * v, h * v)
        self.attention_dropout_rate = config.attention_dropout_rate
        self.positional_dropout = nn.Dropout(config.positional_dropout_rate)
        for layer in (self.q, self.k, self.v, self.r_k):
            variance_scaling_(layer.weight, fan_in=layer.in_features)
        # TF computes fan_in of a [1, h, 1, k] variable as h.
        variance_scaling_(self.r_w_bias, fan_in=h)
        variance_scaling_(self.r_r_bias, fan_in=h)
        nn.init.zeros_(self.output.weight)  # zero-initialised: each block starts as the identity
        nn.init.zeros_(self.output.bias)
        self._features: dict[tuple, torch.Tensor] = {}

    def relative_features(self, seq_length: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (seq_length, device, dtype)
        if key not in self._features:
            self._features[key] = positional_features(seq_length, self.num_features).to(device=device, dtype=dtype)
        return self._features[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        h = self.num_heads
        q = self.q(x).view(b, t, h, -1).transpose(1, 2) * self.key_size**-0.5  # [b, h, t, k]
        k = self.k(x).view(b, t, h, -1).transpose(1, 2)
        v = self.v(x).view(b, t, h, -1).transpose(1, 2)
        features = self.relative_features(t, x.device, self.r_k.weight.dtype)
        features = self.positional_dropout(features)
        r_k = self.r_k(features).view(2 * t - 1, h, -1).permute(1, 2, 0)  # [h, k, 2t - 1]
        content = torch.matmul(q + self.r_w_bias.to(q.dtype), k.transpose(-1, -2))  # [b, h, t, t]
        relative = torch.matmul(q + self.r_r_bias.to(q.dtype), r_k.to(q.dtype))  # [b, h, t, 2t - 1]
        logits = _AddRelativeLogits.apply(content, relative)
        out = _AttendFunction.apply(logits, v.to(logits.dtype), self.attention_dropout_rate, self.training)  # [b, h, t, v]
        return self.output(out.transpose(1, 2).reshape(b, t, -1))
