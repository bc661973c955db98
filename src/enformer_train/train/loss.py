"""The training loss: Poisson negative log-likelihood of the counts, up to terms without `pred`."""
from __future__ import annotations

import torch


def poisson_terms(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Elementwise pred - target * log(pred), in the inputs' dtype (validation sums these per track)."""
    return pred - target * torch.log(pred)


def poisson_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean(pred - target * log(pred)) over [batch, positions, tracks], in float32."""
    return poisson_terms(pred.float(), target.float()).mean()
