"""Adam (AdamW when weight decay is on) and the learning-rate schedule."""
from __future__ import annotations

import math

import torch


def make_optimizer(model: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    """Adam over the trainable parameters (frozen ones get no state). With cfg.head_learning_rate,
    the heads are a second group whose rate is that times the schedule's factor ('lr_scale')."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if cfg.head_learning_rate is None:
        groups = [{"params": [p for _, p in trainable], "lr_scale": 1.0}]
    else:
        groups = [{"params": [p for n, p in trainable if not n.startswith("heads.")], "lr_scale": 1.0},
                  {"params": [p for n, p in trainable if n.startswith("heads.")],
                   "lr_scale": cfg.head_learning_rate / cfg.learning_rate}]
        groups = [g for g in groups if g["params"]]
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
