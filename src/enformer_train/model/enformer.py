"""Enformer (Avsec et al. 2021) in PyTorch, module for module as DeepMind's enformer.py.

stem -> conv_tower -> transformer -> crop -> final_pointwise -> heads, with the paper's names.
The trunk runs channels-first ([batch, channels, length]) through the convolutions and
channels-last ([batch, positions, channels]) through the transformer.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..codes import ONE_HOT
from .attention import MultiheadAttention
from .batchnorm import CrossReplicaBatchNorm, at_least_float32, frozen_statistics
from .blocks import ConvBlock, ConvTowerBlock, Stem, gelu, init_sonnet_linear
from .config import EnformerConfig
from .ops import autocast_dtype, cast_once


class TransformerBlock(nn.Module):
    """Residual(LayerNorm -> attention -> dropout), then Residual(LayerNorm -> MLP x2 with ReLU)."""

    def __init__(self, config: EnformerConfig) -> None:
        super().__init__()
        c = config.channels
        self.mha_norm = nn.LayerNorm(c, eps=config.layernorm_eps)
        self.attention = MultiheadAttention(config)
        self.mlp_norm = nn.LayerNorm(c, eps=config.layernorm_eps)
        self.mlp_linear1 = nn.Linear(c, 2 * c)
        self.mlp_linear2 = nn.Linear(2 * c, c)
        init_sonnet_linear(self.mlp_linear1)
        init_sonnet_linear(self.mlp_linear2)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attention(self.mha_norm(x)))
        y = self.dropout(F.relu(self.mlp_linear1(self.mlp_norm(x))))
        return x + self.dropout(self.mlp_linear2(y))


class FinalPointwise(nn.Module):
    """conv_block(2 x channels, 1) -> dropout -> GELU on [batch, positions, channels]."""

    def __init__(self, config: EnformerConfig) -> None:
        super().__init__()
        self.conv_block = ConvBlock(config.channels, 2 * config.channels, 1, config)
        self.dropout = nn.Dropout(config.final_dropout_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_block(x.transpose(1, 2)).transpose(1, 2)
        return gelu(self.dropout(x))


class Head(nn.Module):
    """Linear -> softplus, in float32 even under autocast."""

    def __init__(self, channels: int, tracks: int) -> None:
        super().__init__()
        self.linear = nn.Linear(channels, tracks)
        init_sonnet_linear(self.linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type in ("cuda", "cpu", "xpu") and torch.is_autocast_enabled(x.device.type):
            with torch.autocast(device_type=x.device.type, enabled=False):
                return F.softplus(self.linear(at_least_float32(x)))
        return F.softplus(self.linear(x))


_ONE_HOT_TABLES: dict = {}


def one_hot(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 codes [batch, length] (0-3 = ACGT, 4 = N) -> one-hot [batch, length, 4]; N is all zero.

    A lookup in codes.ONE_HOT, copied once per device and dtype: a code outside 0-4 is an index
    error, with no host sync on the hot path.
    """
    if torch.compiler.is_compiling():  # a constant of the graph: a guard on the cache would fail once it fills
        return torch.from_numpy(ONE_HOT).to(device=x.device, dtype=dtype)[x.long()]
    table = _ONE_HOT_TABLES.get((x.device, dtype))
    if table is None:
        table = torch.from_numpy(ONE_HOT).to(device=x.device, dtype=dtype)
        _ONE_HOT_TABLES[(x.device, dtype)] = table
    return table[x.long()]


def _recompute_without_statistics():
    return contextlib.nullcontext(), frozen_statistics()


_HALF = (torch.bfloat16, torch.float16)


def _cast_weights(block: nn.Module) -> dict[str, torch.Tensor]:
    """The float32 parameters of `block` that autocast casts where an operator takes them: every one
    but the normalisations' (batch norms keep float32 weights beside bf16 inputs, layer norms run in
    float32)."""
    skip = {name for name, m in block.named_modules() if isinstance(m, (CrossReplicaBatchNorm, nn.LayerNorm))}
    return {name: p for name, p in block.named_parameters()
            if p.dtype == torch.float32 and name.rpartition(".")[0] not in skip}


def run_cast_once(block: nn.Module, x: torch.Tensor, on: bool = True) -> torch.Tensor:
    """block(x); under autocast (eager) and `on`, with the block's weights cast to the lower dtype in
    one operation and their gradients back in one (ops.CastOnce), instead of autocast's two casts
    per weight. The same numbers as block(x) under autocast. A compiled graph fuses the casts itself."""
    dtype = autocast_dtype(x.device)
    if not on or dtype not in _HALF or torch.compiler.is_compiling():
        return block(x)
    weights = _cast_weights(block)
    if not weights:
        return block(x)
    cast = cast_once(list(weights.values()), dtype)
    return torch.func.functional_call(block, dict(zip(weights, cast)), (x,), tie_weights=False)


class Enformer(nn.Module):
    """Enformer. forward(x [batch, length, 4] one-hot or [batch, length] uint8 codes)
    -> {head: [batch, target_length, tracks]} (or one tensor with `head=`)."""

    def __init__(self, config: EnformerConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or EnformerConfig()
        self.stem = Stem(config)
        filters = config.tower_filters
        self.conv_tower = nn.ModuleList(
            ConvTowerBlock(c_in, c_out, config.tower_kernel_size, config)
            for c_in, c_out in zip([config.channels // 2] + filters[:-1], filters))
        self.transformer = nn.ModuleList(TransformerBlock(config) for _ in range(config.num_transformer_layers))
        self.final_pointwise = FinalPointwise(config)
        self.heads = nn.ModuleDict({name: Head(2 * config.channels, tracks) for name, tracks in config.heads.items()})
        # Under autocast, each block's weights are cast to bf16 in one operation (run_cast_once);
        # False leaves the casts to autocast, one per weight (the same numbers; benchmarks/casts.py).
        self.cast_weights_once = True

    def use_reducer(self, reducer) -> None:
        """Every cross-replica batch norm sums its statistics with `reducer` (a distributed.Reducer;
        by default the process group's ranks)."""
        for module in self.modules():
            if isinstance(module, CrossReplicaBatchNorm):
                module.use_reducer(reducer)

    def _checkpointed(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """block(x), under activation checkpointing when the config asks for it and a backward will follow."""
        if self.config.gradient_checkpointing and self.training and torch.is_grad_enabled():
            if torch.compiler.is_compiling():
                # Compiled, the recomputation is the partitioner's: it replays no buffer update
                # (those are applied once, after the forward), so no context to freeze them.
                return checkpoint(block, x, use_reentrant=False)
            return checkpoint(run_cast_once, block, x, self.cast_weights_once, use_reentrant=False,
                              context_fn=_recompute_without_statistics)
        return run_cast_once(block, x, self.cast_weights_once)

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        """[batch, positions, channels] -> [batch, target_length, channels], the same trimmed each side."""
        positions, target = x.shape[1], self.config.target_length
        excess = positions - target
        if excess < 0 or excess % 2:
            raise ValueError(
                f"the trunk gives {positions} bins and the target is {target}: the difference must be even and "
                f"non-negative. Use an input of ({target} + 2k) x {self.config.bin_size} bp, e.g. "
                f"{(target + (max(excess, 0) + 1) // 2 * 2) * self.config.bin_size}")
        return x[:, excess // 2: positions - excess // 2] if excess else x

    def tower(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution tower's output [batch, channels, length / 128] of one-hot or coded x.
        Each of its positions depends only on the bases `tower_reach` names (in evaluation mode:
        training-mode batch norm mixes the positions through its statistics)."""
        dtype = self.stem.conv.weight.dtype  # float32, or float64 for a model in double precision
        x = one_hot(x, dtype) if x.dtype == torch.uint8 or not x.is_floating_point() else x.to(dtype)
        if x.ndim != 3 or x.shape[-1] != 4:
            raise ValueError(f"expected one-hot [batch, length, 4] or codes [batch, length], got {tuple(x.shape)}")
        if x.shape[1] % self.config.bin_size:
            raise ValueError(f"input length {x.shape[1]} is not a multiple of the bin size {self.config.bin_size}")
        x = x.transpose(1, 2)
        x = self._checkpointed(self.stem, x)
        for block in self.conv_tower:
            x = self._checkpointed(block, x)
        return x

    def tower_reach(self) -> tuple[int, int]:
        """(first, last): the tower's position j reads the bases 128 j + first .. 128 j + last of
        its input (first < 0; zero padding past the window's ends, as each convolution pads).
        Derived from the layers: every block is a convolution ("same" padding), position-wise
        layers and a pooling of pairs."""
        first, last = 0, 0
        stages = [(self.config.tower_kernel_size, 2)] * len(self.conv_tower) + [(self.config.stem_kernel_size, 2)]
        for kernel, pool in stages:  # from the top down: undo the pooling, then widen by the convolution
            first, last = first * pool, last * pool + pool - 1
            first, last = first - kernel // 2, last + kernel - 1 - kernel // 2
        return first, last

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """The tower's output [batch, channels, positions] -> embeddings [batch, target_length, 2 x channels]:
        the transformer, the crop and the final pointwise block."""
        x = x.transpose(1, 2)
        for block in self.transformer:
            x = self._checkpointed(block, x)
        return run_cast_once(self.final_pointwise, self.crop(x), self.cast_weights_once)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings [batch, target_length, 2 x channels] of one-hot or coded sequence."""
        return self.transform(self.tower(x))

    def heads_of(self, embedding: torch.Tensor, head: str | None = None):
        """{head: predictions} of embeddings, or one head's predictions with `head=`."""
        if head is not None:
            if head not in self.heads:
                raise KeyError(f"no head {head!r}; this model has {', '.join(self.heads)}")
            return self.heads[head](embedding)
        return {name: module(embedding) for name, module in self.heads.items()}

    def forward(self, x: torch.Tensor, head: str | None = None):
        return self.heads_of(self.trunk(x), head)


def build_model(config: EnformerConfig) -> Enformer:
    """The model `config` describes. Every command builds its model here (training, inference,
    loading and importing weights, measuring), so that a second model family changes this one place.
    Under `with torch.device("meta")` it builds without memory, as load_model does."""
    return Enformer(config)
