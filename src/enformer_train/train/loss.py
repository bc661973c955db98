"""The training loss: Poisson negative log-likelihood of the counts, up to terms without `pred`,
as Keras' `poisson` (which DeepMind's training colab uses) computes it."""
from __future__ import annotations

import torch

# Keras' epsilon: a prediction that underflows to 0 (softplus of a large negative float32) with a
# zero target gives a finite 0 instead of 0 x -inf = NaN and a skipped step.
EPSILON = 1e-7


def poisson_terms(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Elementwise pred - target * log(pred + 1e-7), in the inputs' dtype (validation sums these per track)."""
    return pred - target * torch.log(pred + EPSILON)


def poisson_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean(pred - target * log(pred + 1e-7)) over [batch, positions, tracks], in float32 (float64
    for a float64 prediction)."""
    dtype = torch.float64 if pred.dtype == torch.float64 else torch.float32
    return poisson_terms(pred.to(dtype), target.to(dtype)).mean()
