"""Variant-effect statistics: how the alternative allele's predicted tracks differ from the reference's,
reduced over bins as Calico's baskerville scores SNPs (`compute_scores` in baskerville/snps.py), and the
table of each statistic's percentiles over all variants that baskerville writes beside the scores
(`write_pct`).

Where this differs from baskerville, on purpose: logJS takes its pseudocount and normalisation over
bins, not over shifts; a strand pair's JS and logJS is the divergence of one distribution over both
strands' bins, not the sum of two; REF and ALT are summed over a strand pair like the scores. Scores
keep the predictions' dtype: baskerville's float16 clip belongs to whoever writes them.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..errors import UserError

STATS = ("SAD", "SAR", "SUM", "logSUM", "sqrtSUM", "SAX", "D1", "logD1", "sqrtD1", "D2", "logD2", "sqrtD2",
         "JS", "logJS", "REF", "ALT")
PER_BIN = ("REF", "ALT")  # the predictions themselves, [shifts, bins, columns] per variant

# Each statistic as (the transform of the predictions it compares, its reduction over bins). SAD and SAR
# are this project's names for baskerville's SUM and logSUM.
_MEASURES = {
    "SAD": ("", "sum"), "SUM": ("", "sum"), "SAR": ("log", "sum"), "logSUM": ("log", "sum"),
    "sqrtSUM": ("sqrt", "sum"), "SAX": ("", "max"),
    "D1": ("", "d1"), "logD1": ("log", "d1"), "sqrtD1": ("sqrt", "d1"),
    "D2": ("", "d2"), "logD2": ("log", "d2"), "sqrtD2": ("sqrt", "d2"),
    "JS": ("", "js"), "logJS": ("log", "js"),
}

# baskerville's write_pct: fine steps in both tails, coarse ones between (fractions, not percents).
PERCENTILES = np.concatenate([np.arange(0.001, 0.1, 0.001), np.arange(0.1, 0.9, 0.01), np.arange(0.9, 1, 0.001)])


def compute_scores(ref: torch.Tensor, alt: torch.Tensor, stats: Sequence[str],
                   columns: list[list[int]] | None = None) -> dict[str, torch.Tensor]:
    """{stat: [columns]} for each of `stats`, and {stat: [shifts, bins, columns]} for REF and ALT, from the
    predictions of ONE variant's reference and alternative windows, `ref` and `alt` [shifts, bins, tracks]
    (non-negative; a shift's strands already averaged). Computed in the inputs' dtype on their device.

    Each statistic is taken per shift and track, then averaged over shifts (as baskerville):
    SUM (SAD) sum over bins of alt - ref; logSUM (SAR) of log2(alt + 1) - log2(ref + 1); sqrtSUM of
    sqrt(alt) - sqrt(ref); SAX the signed alt - ref at the bin of the largest |alt - ref| (the first such
    bin on ties); D1, logD1, sqrtD1 and D2, logD2, sqrtD2 the L1 and L2 norms over bins of those three
    differences. JS is baskerville's, which is half the symmetrised KL divergence, not Jensen-Shannon:
    pseudocount pc = the 25th percentile over bins of ref (numpy's linear interpolation), r and a =
    (ref + pc) and (alt + pc) each normalised to sum 1 over bins, JS = (sum r ln(r/a) + sum a ln(a/r)) / 2.
    A track whose ref is zero in every bin has no distribution and scores NaN, and one where r or a
    alone is zero in a bin scores inf, as in baskerville. logJS is JS of log2(ref + 1) and log2(alt + 1);
    baskerville takes that pseudocount and normalisation over shifts (its comment calls its strand
    handling incorrect), here they are over bins like JS.

    `columns` (`--sum-strands`, baskerville's strand_transform) makes each entry, a list of track indices
    (a strand pair or one track), one column; None keeps one column per track. A column's SUM, logSUM,
    sqrtSUM, SAX and D1 family is the sum of its members' scores, its D2 family the root of the sum of
    their squares, REF and ALT the sum of the members' predictions (baskerville leaves those per track).
    Its JS and logJS is one distribution over all its members' bins together: pseudocount, normalisation
    and divergence over members x bins values, where baskerville sums the members' JS.
    """
    for name in stats:
        if name not in STATS:
            raise UserError(f"--stats {name!r}: expected any of {', '.join(STATS)}")
    measures = _Measures(ref, alt, columns)
    measured: dict[tuple[str, str], torch.Tensor] = {}  # SAD and SUM (SAR and logSUM) computed once
    scores: dict[str, torch.Tensor] = {}
    for name in stats:
        if name in PER_BIN:
            scores[name] = measures.per_column(ref if name == "REF" else alt, lambda m: m.sum(-1))
            continue
        key = _MEASURES[name]
        if key not in measured:
            measured[key] = measures.measure(*key)
        scores[name] = measured[key]
    return scores


class _Measures:
    """One variant's predictions and the intermediates its statistics share, each made once and only
    when a statistic asks: the transformed predictions and their differences; for JS, a column's
    members' bins pooled and the order statistics of ref."""

    def __init__(self, ref: torch.Tensor, alt: torch.Tensor, columns: list[list[int]] | None):
        self.ref, self.alt = ref, alt
        self.groups = None if columns is None else _groups(columns, ref.device)
        self.count = ref.shape[-1] if columns is None else len(columns)
        self.values: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.diffs: dict[str, torch.Tensor] = {}
        self.pools: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.order: dict[int, tuple[torch.Tensor, torch.Tensor, float]] = {}

    def per_column(self, x: torch.Tensor, combine: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """[..., tracks] -> [..., columns]: each column's members [..., members] combined into one value."""
        if self.groups is None:
            return x
        out = x.new_empty(*x.shape[:-1], self.count)
        for positions, members in self.groups:
            out[..., positions] = combine(x[..., members])
        return out

    def transformed(self, how: str) -> tuple[torch.Tensor, torch.Tensor]:
        if how not in self.values:
            self.values[how] = (_transform(how, self.ref), _transform(how, self.alt))
        return self.values[how]

    def difference(self, how: str) -> torch.Tensor:
        if how not in self.diffs:
            r, a = self.transformed(how)
            self.diffs[how] = a - r
        return self.diffs[how]

    def pooled(self, group: int) -> tuple[torch.Tensor, torch.Tensor]:
        """ref and alt [shifts, members * bins, columns] of the columns of `group` (-1: every track alone)."""
        if group not in self.pools:
            if group < 0:
                self.pools[group] = self.ref, self.alt
            else:
                members = self.groups[group][1]
                self.pools[group] = _pool_bins(self.ref[..., members]), _pool_bins(self.alt[..., members])
        return self.pools[group]

    def pseudocount(self, how: str, group: int) -> torch.Tensor:
        """[shifts, columns] the 25th percentile of the transformed ref over a column's values. log2(x + 1)
        keeps the order, so logJS interpolates the transformed order statistics that JS found."""
        if group not in self.order:
            self.order[group] = _order_statistics(self.pooled(group)[0], 0.25)
        lower, upper, weight = self.order[group]
        return torch.lerp(_transform(how, lower), _transform(how, upper), weight)

    def measure(self, how: str, reduction: str) -> torch.Tensor:
        """[columns]: the statistic of transform `how` and `reduction`, averaged over shifts."""
        if reduction == "js":
            if self.groups is None:
                r, a = self.transformed(how)
                return _divergence(r, a, self.pseudocount(how, -1)).mean(0)
            out = self.ref.new_empty(self.count)
            for g, (positions, _) in enumerate(self.groups):
                r, a = self.pooled(g)
                out[positions] = _divergence(_transform(how, r), _transform(how, a), self.pseudocount(how, g)).mean(0)
            return out
        d = self.difference(how)
        if reduction == "sum":
            score = d.sum(1)
        elif reduction == "max":
            score = d.gather(1, d.abs().argmax(1, keepdim=True)).squeeze(1)
        elif reduction == "d1":
            score = d.abs().sum(1)
        else:
            score = torch.linalg.vector_norm(d, dim=1)
        score = score.mean(0)
        if reduction == "d2":
            return self.per_column(score, lambda m: torch.linalg.vector_norm(m, dim=-1))
        return self.per_column(score, lambda m: m.sum(-1))


def _transform(how: str, x: torch.Tensor) -> torch.Tensor:
    """The predictions a statistic compares: as they are (""), log2(x + 1) ("log") or sqrt(x) ("sqrt")."""
    if how == "log":
        return (x + 1).log2_()
    return x.sqrt() if how == "sqrt" else x


def _groups(columns: list[list[int]], device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`columns` grouped by their number of members: (the columns' positions [c], their tracks [c, members])
    for each size, so a group is gathered and combined in one indexing."""
    by_size: dict[int, tuple[list[int], list[list[int]]]] = {}
    for j, members in enumerate(columns):
        if not members:
            raise ValueError(f"column {j} has no tracks")
        positions, tracks = by_size.setdefault(len(members), ([], []))
        positions.append(j)
        tracks.append(list(members))
    return [(torch.tensor(p, device=device), torch.tensor(t, device=device)) for p, t in by_size.values()]


def _pool_bins(x: torch.Tensor) -> torch.Tensor:
    """[shifts, bins, columns, members] -> [shifts, members * bins, columns]: a column's members' bins as one
    distribution (their order does not matter to a percentile or a divergence)."""
    shifts, bins, count, members = x.shape
    return x.transpose(2, 3).reshape(shifts, bins * members, count)


def _divergence(ref: torch.Tensor, alt: torch.Tensor, pseudocount: torch.Tensor) -> torch.Tensor:
    """[shifts, values, columns] -> [shifts, columns]: baskerville's JS, (KL(r || a) + KL(a || r)) / 2 of
    `ref` and `alt` each plus `pseudocount` [shifts, columns] and normalised to sum 1 over values."""
    r = ref + pseudocount.unsqueeze(1)
    r /= r.sum(1, keepdim=True)
    a = alt + pseudocount.unsqueeze(1)
    a /= a.sum(1, keepdim=True)
    # r ln(r/a) + a ln(a/r) as (r - a) ln(r/a), one log; rel_entr(0, 0) = 0 where that is 0 * ln(0/0) = NaN
    log_ratio = (r / a).log_()
    same = r == a
    return r.sub_(a).mul_(log_ratio).masked_fill_(same, 0).sum(1) / 2


def _order_statistics(x: torch.Tensor, q: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(lower, upper [shifts, columns], weight): the fraction `q` percentile of `x` [shifts, values, columns]
    over values with numpy's default linear interpolation is torch.lerp(lower, upper, weight). The two order
    statistics come from a partial sort (topk): torch.quantile refuses inputs of over 2**24 values, and a
    full sort along bins takes about four times as long."""
    n = x.shape[1]
    index = (n - 1) * q
    below = math.floor(index)
    above = min(below + 1, n - 1)
    smallest = x.topk(above + 1, 1, largest=False, sorted=False).values
    top = smallest.topk(min(2, above + 1), 1).values  # the upper order statistic, then the lower (one when n is 1)
    return top[:, -1], top[:, 0], index - below


def percentile_table(read_block: Callable[[int, int], np.ndarray], num_rows: int, num_columns: int,
                     block_bytes: int = 256 << 20) -> np.ndarray:
    """[num_columns, len(PERCENTILES)] float64: np.percentile(column, 100 * PERCENTILES) of each column of a
    [num_rows, num_columns] table read a block of columns at a time (read_block(j0, j1) -> [num_rows, j1 - j0]),
    so memory is about block_bytes whatever the table (an h5 dataset is read by columns). A table without
    rows has NaN percentiles. Computed in float64, where baskerville takes the percentiles of its float16
    scores in float16."""
    table = np.full((num_columns, len(PERCENTILES)), np.nan)
    if num_rows == 0:
        return table
    # 16 bytes a value: the block in float64 and np.percentile's partitioned copy of it
    step = max(1, block_bytes // (16 * num_rows))
    for j0 in range(0, num_columns, step):
        j1 = min(j0 + step, num_columns)
        block = np.asarray(read_block(j0, j1), dtype=np.float64)
        table[j0:j1] = np.percentile(block, 100 * PERCENTILES, axis=0).T
    return table
