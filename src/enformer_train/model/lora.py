"""Low-rank adapters (LoRA, Hu et al. 2021) on a frozen model's linear layers.

A LoRA linear computes base(x) + (alpha / r) * x A^T B^T with the base weights frozen, A [r, in]
initialised like a linear layer and B [out, r] at zero, so an adapted model starts as its base.
`merge_lora` folds B A into the base weights and puts plain nn.Linear layers back: a saved model
never holds adapters, and every command loads it the same way.

Ours rather than peft's: peft reaches this model only through its generic module matching and
brings the transformers stack as a dependency; the adapters here are twenty lines.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LoRALinear(nn.Linear):
    """nn.Linear (frozen `weight`, `bias`) plus a trainable low-rank update `lora_b @ lora_a`."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None) -> None:
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None,
                         device=base.weight.device, dtype=base.weight.dtype)
        with torch.no_grad():
            self.weight.copy_(base.weight)
            if base.bias is not None:
                self.bias.copy_(base.bias)
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.rank = rank
        self.scale = (alpha if alpha is not None else rank) / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device,
                                               dtype=base.weight.dtype))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device,
                                               dtype=base.weight.dtype))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + F.linear(F.linear(x, self.lora_a), self.lora_b) * self.scale

    def merged(self) -> nn.Linear:
        """A plain nn.Linear with weight + scale * B A."""
        out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(self.weight + self.scale * (self.lora_b @ self.lora_a))
            if self.bias is not None:
                out.bias.copy_(self.bias)
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, scale={self.scale}"


def _parent(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    *parents, leaf = path.split(".")
    module = model
    for p in parents:
        module = getattr(module, p) if not p.isdigit() else module[int(p)]
    return module, leaf


def add_lora(model: nn.Module, rank: int, targets: list[str], alpha: float | None = None) -> list[str]:
    """Replace every nn.Linear whose module path ends with one of `targets` (e.g. 'attention.q',
    'mlp_linear1') by a LoRALinear of `rank`. Returns the paths adapted, in order."""
    adapted = []
    for path, module in list(model.named_modules()):
        if type(module) is nn.Linear and any(path == t or path.endswith("." + t) for t in targets):
            parent, leaf = _parent(model, path)
            setattr(parent, leaf, LoRALinear(module, rank, alpha))
            adapted.append(path)
    return adapted


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRALinear into a plain nn.Linear, in place; returns the model."""
    for path, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            parent, leaf = _parent(model, path)
            setattr(parent, leaf, module.merged())
    return model


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())
