"""The model's configuration: every size in one dataclass, the paper's model by default."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..errors import UserError


def option(default, help: str):
    """A config field with its one-line meaning (shown by `enformer-train config`); a callable
    default is a factory (for lists and dicts)."""
    if callable(default):
        return field(default_factory=default, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class EnformerConfig:
    """Sizes of an Enformer. Defaults are DeepMind's published model (251,221,292 parameters)."""

    channels: int = option(1536, "channels of the trunk (transformer width)")
    num_transformer_layers: int = option(11, "transformer blocks")
    num_heads: int = option(8, "attention heads per transformer block")
    key_size: int = option(64, "query/key size per attention head")
    value_size: int | None = option(None, "value size per head; null: channels / num_heads, as the reference")
    num_relative_position_features: int | None = option(
        None, "relative positional features (a multiple of 6); null: channels / num_heads")
    num_conv_tower_blocks: int = option(6, "conv tower blocks, each halving the length; bins of 2^(n+1) bp")
    tower_divisible_by: int = option(128, "conv tower filters are rounded to a multiple of this")
    stem_kernel_size: int = option(15, "width of the stem convolution")
    tower_kernel_size: int = option(5, "width of the conv tower convolutions")
    pooling: str = option("attention", "'attention' (softmax pooling, the paper) or 'max'")
    sequence_length: int = option(196_608, "input length in bp the model is built for (others work too)")
    target_length: int = option(896, "output bins kept after cropping the centre")
    dropout_rate: float = option(0.4, "dropout in the transformer blocks")
    attention_dropout_rate: float = option(0.05, "dropout on the attention weights")
    positional_dropout_rate: float = option(0.01, "dropout on the relative positional features")
    final_dropout_rate: float = option(0.05, "dropout after the final pointwise block (dropout_rate / 8 in the reference)")
    batchnorm_decay: float = option(0.9, "decay of the batch norms' moving averages")
    batchnorm_eps: float = option(1e-5, "batch norm epsilon")
    layernorm_eps: float = option(1e-5, "layer norm epsilon")
    cross_replica_batchnorm: bool = option(True, "batch norm statistics over the global batch (all ranks)")
    gradient_checkpointing: bool = option(False, "recompute trunk blocks in the backward pass to save memory")
    heads: dict[str, int] = option(lambda: {"human": 5313, "mouse": 1643},
                                   "output heads {name: tracks}; a store attaches to a head by name")

    def __post_init__(self) -> None:
        if self.value_size is None:
            self.value_size = self.channels // self.num_heads
        if self.num_relative_position_features is None:
            self.num_relative_position_features = self.channels // self.num_heads
        self.heads = {str(k): int(v) for k, v in self.heads.items()}
        self.validate()

    def validate(self) -> None:
        def bad(msg: str) -> None:
            raise UserError(f"model config: {msg}")

        if self.channels % 2:
            bad(f"channels must be even (the stem has channels // 2), got {self.channels}")
        if self.value_size * self.num_heads != self.channels:
            bad(f"value_size x num_heads ({self.value_size} x {self.num_heads}) must equal channels "
                f"({self.channels}): the attention output feeds a residual")
        if self.num_relative_position_features % 6:
            bad("num_relative_position_features must be divisible by 6 (3 feature functions, each "
                f"with a symmetric and a signed copy), got {self.num_relative_position_features}")
        if self.pooling not in ("attention", "max"):
            bad(f"pooling must be 'attention' or 'max', got {self.pooling!r}")
        if not self.heads:
            bad("at least one head is needed, e.g. heads: {human: 5313}")
        if self.tower_filters[-1] != self.channels:
            bad(f"the conv tower ends with {self.tower_filters[-1]} filters (channels {self.channels} rounded to a "
                f"multiple of tower_divisible_by {self.tower_divisible_by}), not channels: make channels a "
                f"multiple of tower_divisible_by, or lower it")
        if self.sequence_length % self.bin_size:
            bad(f"sequence_length {self.sequence_length} is not a multiple of the bin size {self.bin_size}")
        for name in ("dropout_rate", "attention_dropout_rate", "positional_dropout_rate", "final_dropout_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                bad(f"{name} must be in [0, 1), got {getattr(self, name)}")

    @property
    def bin_size(self) -> int:
        return 2 ** (self.num_conv_tower_blocks + 1)

    @property
    def tower_filters(self) -> list[int]:
        """Filters of the conv tower blocks: exponentially spaced from channels/2 to channels."""
        start, end, num = self.channels // 2, self.channels, self.num_conv_tower_blocks
        if num == 1:
            return [end]
        base = math.exp(math.log(end / start) / (num - 1))
        div = self.tower_divisible_by
        return [int(round(start * base**i / div) * div) for i in range(num)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "EnformerConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"{source}: unknown model option(s) {', '.join(unknown)}; "
                            f"known: {', '.join(sorted(known))}")
        return cls(**d)
