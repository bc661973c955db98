"""Validation metrics from running sums: the official per-track Pearson R over all bins of all
sequences (float64 sums of n, x, y, x^2, y^2, xy), then the mean over tracks; R^2; Poisson loss."""
from __future__ import annotations

import torch

from .distributed import all_reduce_
from .loss import poisson_terms


class TrackStats:
    """Running sums per track over [batch, positions, tracks] predictions and targets."""

    def __init__(self, num_tracks: int, device: torch.device):
        # rows: n, sum x, sum y, sum x^2, sum y^2, sum xy, sum poisson
        self.sums = torch.zeros(7, num_tracks, dtype=torch.float64, device=device)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        x, y = pred.double().flatten(0, 1), target.double().flatten(0, 1)
        self.sums += torch.stack([
            torch.full_like(x[0], x.shape[0]), x.sum(0), y.sum(0), (x * x).sum(0), (y * y).sum(0), (x * y).sum(0),
            poisson_terms(x, y).sum(0)])

    def all_reduce(self) -> "TrackStats":
        all_reduce_(self.sums)
        return self

    def per_track(self) -> dict[str, torch.Tensor]:
        n, sx, sy, sxx, syy, sxy, spois = self.sums
        cov = sxy - sx * sy / n
        var_x = sxx - sx * sx / n
        var_y = syy - sy * sy / n
        pearson = cov / torch.sqrt(var_x * var_y)
        ss_res = syy - 2 * sxy + sxx
        r2 = 1 - ss_res / var_y
        return {"pearson_r": pearson, "r2": r2, "poisson_loss": spois / n}

    def summary(self, cage: list[int] | None = None) -> dict[str, float]:
        t = self.per_track()
        out = {"pearson_r": float(t["pearson_r"].nanmean()), "r2": float(t["r2"].nanmean()),
               "poisson_loss": float(self.sums[6].sum() / self.sums[0].sum()),
               "bins": int(self.sums[0, 0])}
        if cage:
            out["pearson_r_cage"] = float(t["pearson_r"][cage].nanmean())
        return out
