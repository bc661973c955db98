"""Multi-head attention with Transformer-XL style relative positions, as in the reference.

Positional features are computed in float64 and cast: the gamma basis loses precision in float32
at long lengths.

Two paths compute the same attention (tests/test_attention_paths.py holds them to 1e-5, forward and
every gradient):
- "explicit": content and shifted relative logits added by a custom function, softmax and dropout
  keeping only the probabilities and a boolean mask for backward (ops.py). On the CPU this is what
  torch's scaled_dot_product_attention does too (its math backend: the fused CPU kernel takes no
  gradient for a bias, nor a value size other than the key size), with less kept for backward.
- "sdpa": torch.nn.functional.scaled_dot_product_attention with the content bias folded into q and
  the shifted relative logits as an additive float bias (a view, no [T, 2T] copy here). On CUDA this
  runs the memory-efficient kernel, which takes a bias with a gradient and a value size (192)
  other than the key size (64): the [T, T] probabilities are never written out.
"auto" (the default) takes "sdpa" on CUDA and "explicit" elsewhere; `set_attention_path` sets one.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import variance_scaling_
from .ops import add_relative_logits, attend, autocast_dtype, shifted_relative

ATTENTION_PATHS = ("auto", "explicit", "sdpa")


def _exponential(distances: torch.Tensor, num: int, positions: int, min_half_life: float = 3.0) -> torch.Tensor:
    max_range = math.log(positions) / math.log(2.0)
    half_life = torch.pow(2.0, torch.linspace(min_half_life, max_range, num, dtype=torch.float64))
    return torch.exp(-math.log(2.0) / half_life[None, :] * distances[:, None])


def _central_mask(distances: torch.Tensor, num: int, positions: int) -> torch.Tensor:
    center_widths = torch.pow(2.0, torch.arange(1, num + 1, dtype=torch.float64)) - 1
    return (center_widths[None, :] > distances[:, None]).to(torch.float64)


def _gamma(distances: torch.Tensor, num: int, positions: int) -> torch.Tensor:
    stddev = positions / (2 * num)
    start_mean = positions / num
    mean = torch.linspace(start_mean, positions, num, dtype=torch.float64)[None, :]
    concentration = (mean / stddev) ** 2
    rate = mean / stddev**2
    x = distances[:, None]
    log_pdf = torch.xlogy(concentration - 1.0, x) - rate * x - (torch.lgamma(concentration)
                                                                  - concentration * torch.log(rate))
    probabilities = torch.exp(log_pdf) + 1e-8
    # Normalised per feature over the positions, as the reference's reduce_max(axis=1) does.
    return probabilities / probabilities.amax(dim=0, keepdim=True)


def positional_features(positions: int, num_features: int) -> torch.Tensor:
    """Relative position features for distances -(T-1) .. T-1: [2T - 1, num_features] float64.

    `positions` is T, the number of positions the transformer attends over (1536 bins for the
    paper's 196,608-bp input), not the input's length in bp.

    Exponential, central mask and gamma bases on |distance|, each num_features / 6 wide, then the
    same multiplied by sign(distance).
    """
    if num_features % 6:
        raise ValueError(f"num_features must be divisible by 6, got {num_features}")
    distances = torch.arange(-positions + 1, positions, dtype=torch.float64)
    per_basis = num_features // 6
    symmetric = torch.cat([f(distances.abs(), per_basis, positions) for f in (_exponential, _central_mask, _gamma)],
                          dim=-1)
    return torch.cat([symmetric, torch.sign(distances)[:, None] * symmetric], dim=-1)


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
        self.attention_path = "auto"

    def relative_features(self, positions: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        if torch.compiler.is_compiling():
            # computed in the graph: a guard on the cache (filled by an eager call) would fail on the next call
            return positional_features(positions, self.num_features).to(device=device, dtype=dtype)
        key = (positions, device, dtype)
        if key not in self._features:
            self._features[key] = positional_features(positions, self.num_features).to(device=device, dtype=dtype)
        return self._features[key]

    def path(self, device: torch.device) -> str:
        """The path this layer takes on `device`: 'explicit' or 'sdpa' (module docstring)."""
        if self.attention_path != "auto":
            return self.attention_path
        return "sdpa" if device.type == "cuda" else "explicit"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        h = self.num_heads
        q = self.q(x).view(b, t, h, -1).transpose(1, 2) * self.key_size**-0.5  # [b, h, t, k]
        k = self.k(x).view(b, t, h, -1).transpose(1, 2)
        v = self.v(x).view(b, t, h, -1).transpose(1, 2)
        dtype = self.r_k.weight.dtype  # float32 or float64; under autocast, bf16 copies of the weights may be
        if dtype in (torch.bfloat16, torch.float16) and autocast_dtype(x.device) is not None:
            dtype = torch.float32  # used (run_cast_once), and the features stay float32 as autocast keeps them
        features = self.relative_features(t, x.device, dtype)
        features = self.positional_dropout(features)
        r_k = self.r_k(features).view(2 * t - 1, h, -1).permute(1, 2, 0)  # [h, k, 2t - 1]
        relative = torch.matmul(q + self.r_r_bias.to(q.dtype), r_k.to(q.dtype))  # [b, h, t, 2t - 1]
        content_q = q + self.r_w_bias.to(q.dtype)
        if self.path(x.device) == "sdpa":
            rate = self.attention_dropout_rate if self.training else 0.0
            out = F.scaled_dot_product_attention(content_q, k, v.to(q.dtype), attn_mask=shifted_relative(relative),
                                                 dropout_p=rate, scale=1.0)
        else:
            content = torch.matmul(content_q, k.transpose(-1, -2))  # [b, h, t, t]
            logits = add_relative_logits(content, relative)
            out = attend(logits, v.to(logits.dtype), self.attention_dropout_rate, self.training)  # [b, h, t, v]
        return self.output(out.transpose(1, 2).reshape(b, t, -1))


def set_attention_path(model: nn.Module, path: str) -> None:
    """Every attention layer of `model` takes `path`: 'auto', 'explicit' or 'sdpa' (module docstring)."""
    if path not in ATTENTION_PATHS:
        raise ValueError(f"attention path {path!r}: expected one of {', '.join(ATTENTION_PATHS)}")
    for module in model.modules():
        if isinstance(module, MultiheadAttention):
            module.attention_path = path


def attention_paths(model: nn.Module, device: torch.device) -> set[str]:
    """The paths the attention layers of `model` take on `device`."""
    return {m.path(device) for m in model.modules() if isinstance(m, MultiheadAttention)}
