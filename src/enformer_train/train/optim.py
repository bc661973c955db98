"""Adam (AdamW when weight decay is on) and the learning-rate schedule."""
from __future__ import annotations

import math

import torch

from ..config import did_you_mean
from ..errors import UserError


def _inside(name: str, path: str) -> bool:
    """Whether parameter `name` (e.g. transformer.0.mlp_linear1.weight) is in module `path`."""
    return name == path or name.startswith(path + ".")


def make_optimizer(model: torch.nn.Module, cfg, note=None) -> torch.optim.Optimizer:
    """Adam over the trainable parameters (frozen ones get no state), in groups by learning-rate
    factor ('lr_scale', times the schedule's rate each step): cfg.head_learning_rate / learning_rate
    for the heads when set, times the cfg.learning_rate_multipliers factor of the longest module path
    that holds the parameter. A factor on a module that is wholly frozen is said through `note`
    (a function of one line) and unused; a path that names no module of the model is a UserError."""
    named = list(model.named_parameters())
    trainable = [(n, p) for n, p in named if p.requires_grad]
    multipliers = dict(cfg.learning_rate_multipliers or {})
    for path, factor in multipliers.items():
        if any(_inside(n, path) for n, _ in trainable):
            continue
        if any(_inside(n, path) for n, _ in named):
            if note is not None:
                note(f"train.learning_rate_multipliers.{path}: every parameter of {path!r} is frozen (train.freeze "
                     f"or train.lora_rank), its factor {factor:g} is not used")
            continue
        modules = sorted({n.split(".")[0] for n, _ in named})
        owners = sorted({n.rsplit(".", 1)[0] for n, _ in named} | set(modules))
        hint = did_you_mean(path, owners) or f"; paths start with {', '.join(modules)}"
        raise UserError(f"train.learning_rate_multipliers.{path}: no module {path!r} in the model{hint}")
    groups: dict[tuple, list] = {}  # by (head group, factor), in the model's parameter order
    for name, p in trainable:
        scale, head = 1.0, cfg.head_learning_rate is not None and name.startswith("heads.")
        if head:
            scale = cfg.head_learning_rate / cfg.learning_rate
        inside = [path for path in multipliers if _inside(name, path)]
        if inside:
            scale *= multipliers[max(inside, key=len)]
        groups.setdefault((head, scale), []).append(p)
    groups = [{"params": params, "lr_scale": scale} for (_, scale), params in groups.items()]
    if cfg.weight_decay > 0:
        return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=cfg.adam_betas, eps=cfg.adam_eps,
                                 weight_decay=cfg.weight_decay)
    return torch.optim.Adam(groups, lr=cfg.learning_rate, betas=cfg.adam_betas, eps=cfg.adam_eps)


def learning_rate(step: int, cfg) -> float:
    """Rate for global step `step` (0-based): linear warmup to the peak over warmup_steps (as the
    official colab: peak x min(1, step / warmup)), then constant or cosine down to 0 at cfg.steps."""
    peak = cfg.learning_rate
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "cosine":
        span = max(1, cfg.steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return peak * 0.5 * (1 + math.cos(math.pi * progress))
    return peak
