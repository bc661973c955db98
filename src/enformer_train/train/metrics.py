"""Validation metrics from running sums: the official per-track Pearson R over all bins of all
sequences (float64 sums of n, x, y, x^2, y^2, xy), then the mean over tracks; R^2; Poisson loss."""
from __future__ import annotations

import torch

from ..distributed import all_reduce_
from .loss import poisson_terms


class TrackStats:
    """Running sums per track over [batch, positions, tracks] predictions and targets."""

    def __init__(self, num_tracks: int, device: torch.device):
        # rows: n, sum x, sum y, sum x^2, sum y^2, sum xy, sum poisson, then the counts of non-finite
        # predictions and targets (their tracks' sums are NaN: reported, never averaged away)
        self.sums = torch.zeros(9, num_tracks, dtype=torch.float64, device=device)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        x, y = pred.double().flatten(0, 1), target.double().flatten(0, 1)
        self.sums += torch.stack([
            torch.full_like(x[0], x.shape[0]), x.sum(0), y.sum(0), (x * x).sum(0), (y * y).sum(0), (x * y).sum(0),
            poisson_terms(x, y).sum(0), (~torch.isfinite(x)).sum(0).double(), (~torch.isfinite(y)).sum(0).double()])

    def nonfinite(self) -> dict[str, dict[int, int]]:
        """{'predictions': {track: count}, 'targets': {track: count}} of the non-finite values met."""
        return {kind: {int(t): int(row[t]) for t in torch.nonzero(row).flatten().tolist()}
                for kind, row in (("predictions", self.sums[7]), ("targets", self.sums[8]))}

    def all_reduce(self) -> "TrackStats":
        all_reduce_(self.sums, what="the validation sums' all_reduce")
        return self

    def per_track(self) -> dict[str, torch.Tensor]:
        n, sx, sy, sxx, syy, sxy, spois = self.sums[:7]
        cov = sxy - sx * sy / n
        var_x = sxx - sx * sx / n
        var_y = syy - sy * sy / n
        pearson = cov / torch.sqrt(var_x * var_y)
        ss_res = syy - 2 * sxy + sxx
        r2 = 1 - ss_res / var_y
        return {"pearson_r": pearson, "r2": r2, "poisson_loss": spois / n}

    def summary(self, cage: list[int] | None = None) -> dict[str, float]:
        t = self.per_track()
        # A track without variance has no R (NaN, left out of the mean); a track that met a non-finite
        # value makes the mean NaN instead of a mean over fewer tracks.
        bad = (self.sums[7] + self.sums[8]) > 0
        r, r2 = t["pearson_r"].masked_fill(bad, float("nan")), t["r2"].masked_fill(bad, float("nan"))

        def mean(values, tracks=None):
            return float("nan") if bad[tracks if tracks is not None else slice(None)].any() else float(
                (values if tracks is None else values[tracks]).nanmean())

        out = {"pearson_r": mean(r), "r2": mean(r2), "poisson_loss": float(self.sums[6].sum() / self.sums[0].sum()),
               "bins": int(self.sums[0, 0])}
        if cage:
            out["pearson_r_cage"] = mean(r, cage)
        if bad.any():
            out["nonfinite_predictions"] = int(self.sums[7].sum())
            out["nonfinite_targets"] = int(self.sums[8].sum())
        return out
