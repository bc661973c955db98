"""Adam (AdamW when weight decay is on) and the learning-rate schedule."""
from __future__ import annotations

import math

import torch


def make_optimizer(model: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.weight_decay > 0:
        return torch.optim.AdamW(params, lr=cfg.learning_rate, betas=cfg.adam_betas, eps=cfg.adam_eps,
                                 weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.learning_rate, betas=cfg.adam_betas, eps=cfg.adam_eps)


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
