"""The model's configuration: every size in one dataclass, the paper's model by default."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..errors import UserError


@dataclass
class EnformerConfig:
    """Sizes of an Enformer. Defaults are DeepMind's published model (251,221,292 parameters)."""

    channels: int = 1536
    num_transformer_layers: int = 11
    num_heads: int = 8
    key_size: int = 64
    value_size: int | None = None  # None: channels // num_heads, as the reference
    num_relative_position_features: int | None = None  # None: channels // num_heads
    num_conv_tower_blocks: int = 6  # each halves the length; with the stem's pool, bins of 2**(n+1) bp
    tower_divisible_by: int = 128  # conv tower filters are rounded to this (128 in the paper)
    stem_kernel_size: int = 15
    tower_kernel_size: int = 5
    pooling: str = "attention"  # 'attention' (softmax pooling) or 'max'
    sequence_length: int = 196_608  # the input length the model is built for; others work too
    target_length: int = 896
    dropout_rate: float = 0.4
    attention_dropout_rate: float = 0.05
    positional_dropout_rate: float = 0.01
    final_dropout_rate: float = 0.05  # dropout_rate / 8 in the reference
    batchnorm_decay: float = 0.9
    batchnorm_eps: float = 1e-5
    layernorm_eps: float = 1e-5
    cross_replica_batchnorm: bool = True
    gradient_checkpointing: bool = False
    heads: dict[str, int] = field(default_factory=lambda: {"human": 5313, "mouse": 1643})

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
