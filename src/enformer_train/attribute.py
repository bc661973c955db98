"""`enformer-train attribute`: which bases drive a prediction (contribution scores).

The target of a window is the mean of the model's predictions over a mask of output bins x tracks
(`--bins`, default the three centre bins; `--tracks`), after log1p with `--transform log1p`; with
`--per-track` each track is a target of its own. Methods:

- input-grad (the default) is DeepMind's usage colab's `contribution_input_grad`: in evaluation
  mode, the gradient of the target with respect to the one-hot input [L, 4], times the input,
  summed over the four bases. The hypothetical scores are the gradient itself (minus its mean over
  the four bases with `--mean-center`, Majdandzic, Rajesh and Koo 2023); the per-base score is the
  hypothetical score of the base in the sequence (0 at N).
- ism, in-silico mutagenesis over a span of the window: every position x the three other bases,
  a forward pass each (batched, in chunks). Hypothetical = target(alt) - target(ref) [W, 4], 0 at
  the reference base; the per-base score is minus the mean over the three alternatives (how much
  the reference base holds the target up against the others). Positions that are not A, C, G or T
  are skipped (NaN) and counted. The convolution tower is recomputed only where a mutation reaches
  (_TowerSplice); the transformer and heads run whole.
- integrated-gradients: captum's IntegratedGradients from a uniform baseline (0.25 per base) in
  `--steps` steps; hypothetical = its attributions [L, 4], the per-base score their sum over the
  bases; captum's convergence delta (sum of attributions minus target(input) - target(baseline)) is
  kept per region.

`--rc` averages each map with the reverse-complement window's, mapped back to the forward strand
(positions reversed, bases complemented, stranded tracks swapped with their partners in targets.txt),
as `--tta` does for predictions in `score-variants`.

Regions come one (`--region`) or many (`--regions BED`); they are cut into chunks that the ranks of
a torchrun share, and a stopped run resumes from OUT.partial/ (chunks.py), as `score-variants` does.
"""
from __future__ import annotations

import contextlib
import difflib
import json
import os
import shutil
import sys
from dataclasses import dataclass

import numpy as np
import torch

from . import chunks
from .data.augment import COMPLEMENT
from .data.formats.coverage import BigWigWriter, require_bigwig_writer
from .data.formats.genome import Genome
from .data.formats.targets import strand_pairs
from .distributed import barrier, setup, teardown
from .errors import UserError
from .files import atomic_write
from .infer import (
    choose_head,
    flank,
    output_span,
    predict_codes,
    select_tracks,
    targets_for,
    to_forward_strand,
    tta_views,
)
from .model.enformer import one_hot
from .predict import parse_region
from .progress import progress
from .saved import load

METHODS = ("input-grad", "ism", "integrated-gradients")
_BIGWIG = (".bw", ".bigwig", ".bigWig")
_FORMATS = (".npz", ".h5", ".hdf5", *_BIGWIG)
# What a chunk file holds per region (rows): the arrays that the output stacks.
_ROWS = ("window_start", "span_start", "scores", "hypothetical", "prediction", "delta", "skipped", "profile")


# -- the target -----------------------------------------------------------------------------------


@dataclass
class Target:
    """The mean of predictions [batch, bins, tracks] over `bins` x `tracks` (after log1p when
    `log1p`): [batch], or [batch, len(tracks)] when `per_track`."""

    bins: list[int]
    tracks: list[int]
    log1p: bool = False
    per_track: bool = False

    @property
    def maps(self) -> int:
        """Maps per window: one per track with per_track, else one."""
        return len(self.tracks) if self.per_track else 1

    def __call__(self, pred: torch.Tensor) -> torch.Tensor:
        index = torch.as_tensor(self.bins, device=pred.device)
        x = pred.index_select(1, index).index_select(2, torch.as_tensor(self.tracks, device=pred.device))
        if self.log1p:
            x = torch.log1p(x)
        return x.mean(1) if self.per_track else x.mean((1, 2))


def parse_bins(spec: str | None, target_length: int) -> list[int]:
    """Output-bin indices from '447-449,500' (ranges inclusive), in order, without repeats; by
    default the three centre bins T/2 - 1 .. T/2 + 1 (the colab's 447-449 of 896)."""
    if not spec:
        centre = target_length // 2
        return [b for b in (centre - 1, centre, centre + 1) if 0 <= b < target_length]
    bins: list[int] = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        low, _, high = item.partition("-")
        try:
            a, b = int(low), int(high) if high else int(low)
        except ValueError:
            raise UserError(f"--bins {item!r}: expected bin indices and ranges, e.g. 447-449,500") from None
        if a > b:
            raise UserError(f"--bins {item!r}: a range runs from low to high")
        if a < 0 or b >= target_length:
            raise UserError(f"--bins {item!r}: outside the model's output bins 0-{target_length - 1}")
        bins.extend(range(a, b + 1))
    if not bins:
        raise UserError(f"--bins {spec!r}: no bins")
    return list(dict.fromkeys(bins))


# -- the methods, on windows of codes ----------------------------------------------------------------


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def _strand(codes: torch.Tensor, reverse: bool) -> torch.Tensor:
    """Codes [..., L] of the window's forward or reverse-complement strand."""
    return torch.as_tensor(COMPLEMENT, device=codes.device)[codes.flip(-1).long()] if reverse else codes


def _to_forward(values: torch.Tensor, reverse: bool) -> torch.Tensor:
    """A map [..., L, 4] of the reverse-complement strand on the forward one: positions reversed,
    bases complemented (A<->T, C<->G: the ACGT axis reversed)."""
    return values.flip(-2).flip(-1) if reverse else values


def _target_of(model, x: torch.Tensor, head: str, target: Target, reverse: bool, strand_pair, autocast: bool):
    """The target of one-hot windows x [n, L, 4] of one strand, on the forward strand's bins and tracks."""
    with _autocast(x.device, autocast):
        pred = model(x, head=head)
    return target(to_forward_strand(pred.float(), reverse, strand_pair))


# Why the batched backward (maps_per_backward > 1) runs without autocast.
_NO_BATCHED_HALF = "torch.func's vmap has no rule for batch norm's backward of a bf16 input beside float32 statistics"


def input_grad(model, codes: torch.Tensor, head: str, target: Target, *, mean_center: bool = False,
               rc: bool = False, strand_pair: torch.Tensor | None = None, autocast: bool = False,
               maps_per_backward: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient maps of windows of codes [n, L] (on the model's device): (hypothetical
    [n, (k,) L, 4], target [n, (k)]) in the model's dtype, k = len(target.tracks) with per_track.

    The model's weights are held out of autograd meanwhile (weights_frozen), so each backward
    computes the input's gradient alone. With per_track the k maps come from one forward and
    backwards through its graph: one a track (maps_per_backward 1), or the tracks'
    cotangents `maps_per_backward` at a time in one batched backward (torch.func.vjp, vmapped over
    them): the faster on the demo's small model, 1.7x slower at quarter width on a CPU
    (benchmarks/RESULTS.md, contribution scores)."""
    if maps_per_backward < 1:
        raise ValueError(f"maps_per_backward must be at least 1, got {maps_per_backward}")
    if maps_per_backward > 1 and autocast:
        raise ValueError(f"maps_per_backward > 1 runs in the model's dtype only: {_NO_BATCHED_HALF}")
    k = target.maps
    dtype = next(model.parameters()).dtype
    maps, values = [], []
    with weights_frozen(model), torch.enable_grad():
        for reverse in ((False, True) if rc else (False,)):
            x = one_hot(_strand(codes, reverse), dtype)

            def value_of(x, reverse=reverse):  # [n] or [n, k]
                return _target_of(model, x, head, target, reverse, strand_pair, autocast)

            if target.per_track and maps_per_backward > 1:
                value, vjp = torch.func.vjp(value_of, x)
                # track j's cotangent: 1 at [:, j], 0 elsewhere; vmapped over the tracks
                ones = torch.eye(k, dtype=value.dtype, device=value.device)[:, None, :].expand(k, *value.shape)
                grad = torch.func.vmap(vjp, chunk_size=maps_per_backward)(ones)[0].transpose(0, 1)  # [n, k, L, 4]
            else:
                x.requires_grad_(True)
                value = value_of(x)
                if target.per_track:
                    grad = torch.stack([torch.autograd.grad(value[:, j].sum(), x, retain_graph=j < k - 1)[0]
                                        for j in range(k)], dim=1)  # [n, k, L, 4]
                else:
                    grad, = torch.autograd.grad(value.sum(), x)
            maps.append(_to_forward(grad, reverse))
            values.append(value.detach())
    hypothetical, value = sum(maps) / len(maps), sum(values) / len(values)
    if mean_center:
        hypothetical = hypothetical - hypothetical.mean(-1, keepdim=True)
    return hypothetical, value


@contextlib.contextmanager
def weights_frozen(model):
    """Inside, the model's parameters do not require gradients (then as before): a backward to the
    input skips what only the weights' gradients need (the softmax pooling's weight product), and
    torch.func's batched backward computes no weight gradients for each of its maps, which
    multiplied its memory."""
    wanted = [p for p in model.parameters() if p.requires_grad]
    for p in wanted:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in wanted:
            p.requires_grad_(True)


def integrated_gradients(model, codes: torch.Tensor, head: str, target: Target, *, steps: int = 50,
                         batch_size: int = 8, rc: bool = False, strand_pair: torch.Tensor | None = None,
                         autocast: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """captum's integrated gradients of one window of codes [1, L] from the uniform baseline:
    (attributions [(k,) L, 4], target [(k)], convergence delta [(k)]), averaged over the strands with rc."""
    try:
        from captum.attr import IntegratedGradients  # optional: the attribute extra
    except ImportError:
        raise UserError("--method integrated-gradients needs captum (pip install 'enformer-train[attribute]')") from None
    dtype = next(model.parameters()).dtype
    maps, values, deltas = [], [], []
    for reverse in ((False, True) if rc else (False,)):
        x = one_hot(_strand(codes, reverse), dtype)

        def forward(inputs, reverse=reverse):
            return _target_of(model, inputs, head, target, reverse, strand_pair, autocast)

        ig = IntegratedGradients(forward)
        with weights_frozen(model), torch.enable_grad():
            attributions, delta = [], []
            for j in (range(target.maps) if target.per_track else [None]):
                a, d = ig.attribute(x, baselines=torch.full_like(x, 0.25), target=j, n_steps=steps,
                                    internal_batch_size=batch_size, return_convergence_delta=True)
                attributions.append(a[0])
                delta.append(d[0])
        with torch.no_grad():
            value = forward(x)[0]
        stacked = torch.stack(attributions) if target.per_track else attributions[0]
        maps.append(_to_forward(stacked.float(), reverse))
        values.append(value.float())
        deltas.append(torch.stack(delta).float() if target.per_track else delta[0].float())
    return sum(maps) / len(maps), sum(values) / len(values), sum(deltas) / len(deltas)


class _TowerSplice:
    """In-silico mutagenesis that recomputes only what a mutation reaches (the fastISM idea).

    The convolution tower (evaluation mode) is local: its position j reads the bases
    `model.tower_reach()` names around bin j and nothing else, so a mutation at base p changes
    only the positions whose reach holds p. Those are computed from a short stretch of the
    window (the same bases, the same zero padding where the stretch meets the window's end),
    written over the reference window's tower output, and the transformer and heads run on the
    result as they do on the whole window's. The transformer sees every position, so it runs
    whole for every mutation: at the paper's size the tower is most of a forward pass.
    """

    def __init__(self, model, codes: torch.Tensor, head: str, autocast: bool):
        self.model, self.head, self.autocast = model, head, autocast
        self.codes = codes  # [L] on the model's device, one strand
        scale = model.config.bin_size
        self.first, self.last = model.tower_reach()
        with torch.no_grad(), _autocast(codes.device, autocast):
            self.reference = model.tower(codes[None])  # [1, channels, positions]
        positions = self.reference.shape[-1]
        # the positions a mutation reaches, and the stretch (in positions) that computes them exactly
        self.reached = (self.last - self.first) // scale + 2
        self.before = -(self.first // scale)  # positions of context on the left: ceil(-first / scale)
        self.stretch = self.reached + self.before + max(0, -(-(self.last - scale + 1) // scale)) + 1
        self.useful = self.stretch < positions

    def predictions(self, mutations: list[tuple[int, int]]) -> torch.Tensor:
        """Predictions [n, target_length, tracks] of the window with each (position, base) mutation."""
        scale = self.model.config.bin_size
        positions = self.reference.shape[-1]
        n = len(mutations)
        starts, spans = [], []
        for p, _ in mutations:
            lo = max(0, -(-(p - self.last) // scale))  # the first position whose reach holds p
            hi = min(positions - 1, (p - self.first) // scale)
            start = min(max(0, lo - self.before), positions - self.stretch)
            starts.append(start)
            spans.append((lo, hi))
        index = torch.as_tensor(starts, device=self.codes.device)[:, None] * scale + torch.arange(
            self.stretch * scale, device=self.codes.device)
        stretches = self.codes[index]  # [n, stretch bases]
        for row, (p, alt) in enumerate(mutations):
            stretches[row, p - starts[row] * scale] = alt
        with torch.no_grad(), _autocast(self.codes.device, self.autocast):
            local = self.model.tower(stretches)  # [n, channels, stretch]
            tower = self.reference.expand(n, -1, -1).clone()
            for row, (lo, hi) in enumerate(spans):
                tower[row, :, lo:hi + 1] = local[row, :, lo - starts[row]:hi + 1 - starts[row]]
            return self.model.heads_of(self.model.transform(tower), self.head).float()


def ism(model, codes: np.ndarray, span: tuple[int, int], head: str, target: Target, *, batch_size: int = 8,
        rc: bool = False, strand_pair: torch.Tensor | None = None, autocast: bool = False,
        bar=None, whole: bool = False) -> tuple[np.ndarray, np.ndarray, int]:
    """In-silico mutagenesis of window `codes` [L] over window indices span = (a, b): (hypothetical
    [(k,) b - a, 4] float32 = target(alt) - target(ref), 0 at the reference base and NaN at
    positions that are not ACGT; the reference target [(k)]; the number of positions skipped).
    Mutated windows are made and predicted `batch_size` at a time, so memory does not grow with
    the span. The convolution tower is recomputed only where a mutation reaches (_TowerSplice)
    unless `whole`, or unless the reach covers the window (a short window)."""
    views = tta_views(rc, max_shift=0)  # the strands; a shift would move the mutation
    device = next(model.parameters()).device
    length = len(codes)
    splices = None
    if not whole and not model.training:
        window = torch.as_tensor(codes, device=device)
        splices = [_TowerSplice(model, _strand(window, view.reverse), head, autocast) for view in views]
        splices = splices if splices[0].useful else None

    def targets(windows: np.ndarray, part=None) -> np.ndarray:
        if splices is None or part is None:
            pred = predict_codes(model, windows, head, views, strand_pair, autocast)
        else:
            pred = sum(to_forward_strand(splice.predictions(
                [(length - 1 - p, int(COMPLEMENT[alt])) if view.reverse else (p, alt) for p, alt in part]),
                view.reverse, strand_pair) for splice, view in zip(splices, views)) / len(views)
        return target(pred.double()).cpu().numpy()

    a, b = span
    reference = targets(codes[None])[0]
    matrix = np.zeros((b - a, 4) + reference.shape, dtype=np.float64)
    mutations = [(p, alt) for p in range(a, b) if codes[p] < 4 for alt in range(4) if alt != codes[p]]
    skipped = [p for p in range(a, b) if codes[p] >= 4]
    matrix[[p - a for p in skipped]] = np.nan
    for i in range(0, len(mutations), batch_size):
        part = mutations[i:i + batch_size]
        windows = None
        if splices is None:
            windows = np.repeat(codes[None], len(part), axis=0)
            for row, (p, alt) in enumerate(part):
                windows[row, p] = alt
        for (p, alt), value in zip(part, targets(windows, part)):
            matrix[p - a, alt] = value - reference
        if bar is not None:
            bar.update(len(part))
    hypothetical = np.moveaxis(matrix, (0, 1), (-2, -1)) if target.per_track else matrix
    return hypothetical.astype(np.float32), reference.astype(np.float32), len(skipped)


def per_base(hypothetical: np.ndarray, codes: np.ndarray, method: str) -> np.ndarray:
    """Per-base scores [..., W] of hypothetical scores [..., W, 4] of a window's codes [W]: the
    value at the sequence's base for gradients (0 at N), their sum for integrated gradients, and
    minus the mean over the three alternatives for ISM (NaN where skipped)."""
    if method == "integrated-gradients":
        return hypothetical.sum(-1)
    if method == "ism":
        return -hypothetical.sum(-1) / 3.0
    return (hypothetical * np.eye(5, 4, dtype=np.float32)[codes]).sum(-1)


# -- regions ----------------------------------------------------------------------------------------


@dataclass
class Region:
    """A region as given (chrom, start, end, where it was named) and where the model reads it."""

    chrom: str
    start: int
    end: int
    source: str  # '--region' or 'FILE:LINE', for messages

    def name(self) -> str:
        return f"{self.chrom}:{self.start}-{self.end}"


def read_regions_bed(path: str) -> list[Region]:
    """Regions of a BED file (chrom, start, end; 0-based, end exclusive; more columns ignored)."""
    if not os.path.exists(path):
        raise UserError(f"--regions {path}: no such file")
    regions = []
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip() or line.startswith(("#", "track", "browser")):
                continue
            fields = line.split()
            try:
                chrom, start, end = fields[0], int(fields[1]), int(fields[2])
            except (IndexError, ValueError):
                raise UserError(f"{path}, line {number}: expected chrom, start, end (BED), got {line.strip()[:80]!r}") from None
            if start < 0 or start >= end:
                raise UserError(f"{path}, line {number}: start {start} must be at least 0 and below end {end}")
            regions.append(Region(chrom, start, end, f"{path}, line {number}"))
    if not regions:
        raise UserError(f"--regions {path}: no regions")
    return regions


def window_start(region: Region, length: int) -> int:
    """The start of the model's input window centred on the region."""
    return (region.start + region.end) // 2 - length // 2


def scored_span(region: Region, length: int, method: str, ism_region: tuple[str, int, int] | None) -> tuple[int, int]:
    """Genome coordinates [start, end) of the bases scored: the whole window for gradients; for ISM
    --ism-region (inside the window) or, without it, the region itself."""
    start = window_start(region, length)
    if method != "ism":
        return start, start + length
    chrom, a, b = ism_region if ism_region else (region.chrom, region.start, region.end)
    where = f"--ism-region {chrom}:{a}-{b}" if ism_region else f"{region.source}: {region.name()}"
    if chrom != region.chrom or a < start or b > start + length:
        raise UserError(f"{where}: outside the model's input window {region.chrom}:{start}-{start + length} "
                        f"({length:,} bp centred on {region.name()})")
    return a, b


# -- output -----------------------------------------------------------------------------------------


def _track_names(tracks: list[int], rows: list[dict] | None) -> list[str]:
    return [rows[t].get("description", "") or rows[t]["identifier"] if rows else str(t) for t in tracks]


def write_arrays(out: str, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """`out` (.npz or .h5) atomically: the stacked per-region arrays and the run's metadata."""
    strings = {k: np.asarray(v) for k, v in meta.items() if isinstance(v, (list, tuple))}
    scalars = {k: v for k, v in meta.items() if not isinstance(v, (list, tuple))}
    if out.endswith(".npz"):
        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays, **strings, **{k: np.asarray(v) for k, v in scalars.items()})
    else:
        import h5py  # optional: the variants extra

        def write(tmp: str) -> None:
            text = h5py.string_dtype("utf-8")
            with h5py.File(tmp, "w") as h5:
                for k, v in {**arrays, **strings}.items():
                    h5.create_dataset(k, data=v.astype(object) if v.dtype.kind in "US" else v,
                                      dtype=text if v.dtype.kind in "US" else None)
                for k, v in scalars.items():
                    h5.attrs[k] = v
    atomic_write(out, write)


def write_bigwigs(out: str, genome: Genome, arrays: dict[str, np.ndarray], names: list[str]) -> list[str]:
    """Per-base scores on the genome's coordinates: one bigWig (or one per track of --per-track,
    OUT_STEM.trackI.bw), positions past a chromosome's ends and unscored (NaN) bases left out."""
    scores = arrays["scores"]  # [R, (k,) W]
    per_track = scores.ndim == 3
    paths = _bigwig_paths(out, list(arrays["tracks"]), per_track)
    order = sorted(range(len(arrays["chrom"])), key=lambda r: (names.index(str(arrays["chrom"][r])),
                                                                 int(arrays["span_start"][r])))
    for j, path in enumerate(paths):
        def write(tmp: str, j=j) -> None:
            with BigWigWriter(tmp, [(c, genome.lengths[c]) for c in names]) as bw:
                for r in order:
                    bw.bases(str(arrays["chrom"][r]), int(arrays["span_start"][r]), scores[r, j] if per_track else scores[r])
        atomic_write(path, write)
    return paths


def _refuse_overlaps(regions: list[Region], spans: list[tuple[int, int]]) -> None:
    """A bigWig holds one value a base: scored spans of two regions must not overlap."""
    order = sorted(range(len(regions)), key=lambda r: (regions[r].chrom, spans[r][0]))
    for r0, r1 in zip(order, order[1:]):
        if regions[r0].chrom == regions[r1].chrom and spans[r1][0] < spans[r0][1]:
            raise UserError(f"{regions[r1].source}: the bases scored for {regions[r1].name()} "
                            f"({regions[r1].chrom}:{spans[r1][0]}-{spans[r1][1]}) overlap those of {regions[r0].name()} "
                            f"({regions[r0].chrom}:{spans[r0][0]}-{spans[r0][1]}); a bigWig holds one value a base: "
                            "write .npz or .h5, or give regions whose spans do not overlap")


def _bigwig_paths(out: str, tracks: list[int], per_track: bool) -> list[str]:
    return [f"{out.rsplit('.', 1)[0]}.track{t}.bw" for t in tracks] if per_track else [out]


def plot_attribution(path: str, arrays: dict[str, np.ndarray], codes: np.ndarray, r: int, bin_size: int,
                     out_flank: int, method: str, title: str) -> None:
    """The colab's figure for region r: the predicted target tracks over the output span, the
    |per-base score| pooled to `bin_size` over the same span (ISM: per base over its span), and a
    sequence logo (logomaker) of the 100 bp with the largest |score|."""
    import logomaker  # optional: the attribute extra

    from .plots import _pyplot  # matplotlib, loaded only when a figure is drawn

    plt = _pyplot()
    scores = arrays["scores"][r]
    scores = scores[0] if scores.ndim == 2 else scores  # the first track's map with --per-track
    profile = arrays["profile"][r]
    span_start = int(arrays["span_start"][r])
    fig, axes = plt.subplots(3, 1, figsize=(12, 7), constrained_layout=True)
    out_start = int(arrays["window_start"][r]) + out_flank
    edges = out_start + bin_size * np.arange(len(profile) + 1)
    axes[0].stairs(profile, edges, fill=True, color="tab:blue")
    axes[0].set_ylabel("prediction\n(target tracks)")
    absolute = np.abs(np.nan_to_num(scores))
    if method == "ism":  # the span may be anywhere in the window: its own axis
        axes[1].plot(span_start + np.arange(len(scores)), absolute, color="tab:red", lw=0.8)
        axes[1].set_ylabel("|ISM score|")
    else:
        lo = out_start - span_start
        pooled = absolute[lo:lo + bin_size * len(profile)].reshape(len(profile), bin_size).mean(1)
        axes[1].stairs(pooled, edges, fill=True, color="tab:red")
        axes[1].set_ylabel(f"|contribution|\n({bin_size}-bp mean)")
        axes[1].set_xlim(edges[0], edges[-1])
    axes[0].set_xlim(edges[0], edges[-1])
    width = min(100, len(scores))
    logo_from = int(np.argmax(np.convolve(absolute, np.ones(width), mode="valid")))
    logo_to = logo_from + width
    matrix = np.nan_to_num(scores[logo_from:logo_to, None] * np.eye(5, 4)[codes[logo_from:logo_to]])
    import pandas as pd  # logomaker's input type, installed with it

    logomaker.Logo(pd.DataFrame(matrix, columns=list("ACGT")), ax=axes[2])
    axes[2].set_xticks([0, logo_to - logo_from - 1], [f"{span_start + logo_from:,}", f"{span_start + logo_to - 1:,}"])
    axes[2].set_ylabel("score")
    axes[0].set_title(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- the command --------------------------------------------------------------------------------------


def run_attribute(checkpoint: str, fasta: str, out: str, region: str | None = None, regions: str | None = None,
                  organism: str | None = None, tracks: str | None = None, targets: str | None = None,
                  bins: str | None = None, transform: str | None = None, per_track: bool = False,
                  maps_per_backward: int = 1,
                  method: str = "input-grad", ism_region: str | None = None, steps: int = 50,
                  mean_center: bool = False, rc: bool = False, plot: str | None = None, device: str = "auto",
                  bf16: bool = False, batch_size: int = 8, chunk_size: int = 16, quiet: bool = False,
                  force: bool = False, collective_timeout_s: float = 600.0) -> dict | None:
    """`enformer-train attribute` (under torchrun too). Rank 0 writes `out` (and `plot`) and returns
    a summary (regions, written files, per-region target values); other ranks return None."""
    _refuse_options(out, plot, method, transform, region, regions, ism_region, mean_center, force,
                    per_track, bf16, batch_size=batch_size, steps=steps, chunk_size=chunk_size,
                    maps_per_backward=maps_per_backward)
    wanted = [Region(*parse_region(region), "--region")] if region else read_regions_bed(regions)
    ism_span = parse_region(ism_region) if ism_region else None

    world = setup(device, collective_timeout_s, "attribute")
    try:
        loaded = load(checkpoint, world.device)
        model = loaded.model
        head = choose_head(model, organism)
        rows = targets_for(loaded, head, targets)
        chosen = select_tracks(tracks, model.config.heads[head], rows)
        target = Target(parse_bins(bins, model.config.target_length), chosen, transform == "log1p", per_track)
        pair = None
        if rc and rows is not None:
            pair = torch.as_tensor(strand_pairs(rows, targets or "targets.txt"), device=world.device)
        genome = Genome(fasta)
        length = model.config.sequence_length
        spans = _spans(wanted, genome, fasta, length, method, ism_span)
        if out.endswith(_BIGWIG):
            _refuse_overlaps(wanted, spans)
            for path in _bigwig_paths(out, chosen, per_track):
                if os.path.exists(path) and not force:
                    raise UserError(f"{path} exists; pass --force to replace it")
        widths = {b - a for a, b in spans}
        if len(widths) > 1:
            raise UserError(f"--regions {regions}: ISM spans of {len(widths)} lengths ({min(widths)}-{max(widths)} bp); "
                            "give regions of one length (e.g. 200 bp around each summit)")
        past = [r for r in wanted if window_start(r, length) < 0
                or window_start(r, length) + length > genome.lengths[r.chrom]]
        if past and world.is_main:
            print(f"enformer-train attribute: {len(past)} window(s) run past a chromosome's end and read N there "
                  f"(first: {past[0].name()})", file=sys.stderr)

        plan = {"checkpoint": chunks.file_identity(loaded.path), "fasta": chunks.file_identity(fasta),
                "regions": [[r.chrom, r.start, r.end] for r in wanted], "head": head, "tracks": chosen,
                "bins": target.bins, "transform": transform or None, "per_track": per_track, "method": method,
                "ism_region": ism_region, "steps": steps, "mean_center": mean_center, "rc": rc, "bf16": bf16,
                "chunk_size": chunk_size, "sequence_length": length}
        bounds = [(i, min(i + chunk_size, len(wanted))) for i in range(0, len(wanted), chunk_size)]
        partial, todo = chunks.start(out, plan, [b - a for a, b in bounds], ["scores"], force, world,
                                     "model, FASTA, regions, tracks, bins, method and its options")
        mine = todo[world.rank::world.world_size]
        if world.is_main and len(todo) < len(bounds):
            print(f"resuming from {partial}: {len(bounds) - len(todo)} of {len(bounds)} chunks done", file=sys.stderr)
        units = sum(b - a for c in mine for a, b in [bounds[c]])
        total = units * (3 * (spans[0][1] - spans[0][0]) if method == "ism" else 1)
        with progress(total, "attribute", "mutation" if method == "ism" else "region",
                      enabled=world.is_main and not quiet) as bar:
            for c in mine:
                a, b = bounds[c]
                rows_of = [_attribute_one(model, genome, wanted[i], spans[i], head, target, method, steps,
                                          mean_center, rc, pair, bf16, batch_size, bar, maps_per_backward)
                            for i in range(a, b)]
                chunks.write_chunk(chunks.chunk_path(partial, c), {k: np.stack([row[k] for row in rows_of])
                                                                   for k in _ROWS})
        barrier(f"the barrier after attributing ({len(mine)} chunks on this rank), before rank 0 writes {out}")
        if not world.is_main:
            return None
        arrays = _assemble(partial, bounds)
        arrays["chrom"] = np.array([r.chrom for r in wanted])
        arrays["tracks"] = np.array(chosen)
        names = _track_names(chosen, rows)
        meta = {"track_names": names, "bins": target.bins, "organism": head, "method": method,
                "options": json.dumps({k: plan[k] for k in ("transform", "per_track", "ism_region", "steps",
                                                            "mean_center", "rc", "bf16")}),
                "checkpoint": loaded.path, "regions": [r.name() for r in wanted]}
        written = _write_outputs(out, plot, arrays, meta, genome, wanted, names, target, model, method, head, bins,
                                 per_track)
        shutil.rmtree(partial, ignore_errors=True)
        return {"regions": len(wanted), "written": written, "method": method, "maps": target.maps,
                "prediction": arrays["prediction"], "delta": arrays["delta"], "skipped": int(arrays["skipped"].sum()),
                "span": int(arrays["scores"].shape[-1]), "output_span": output_span(model)}
    finally:
        teardown()


def _refuse_options(out: str, plot: str | None, method: str, transform: str | None, region: str | None,
                    regions: str | None, ism_region: str | None, mean_center: bool, force: bool, per_track: bool,
                    bf16: bool, **counts: int) -> None:
    """Every refusal that needs no model nor genome, before any work: one line each."""
    if method not in METHODS:
        raise UserError(f"--method {method!r}: expected {', '.join(METHODS)}")
    if not out.endswith(_FORMATS):
        raise UserError(f"--out {out}: expected .npz, .h5 or .bw (bigWig of the per-base scores)")
    if transform not in (None, "", "log1p"):
        raise UserError(f"--transform {transform!r}: expected log1p (or none)")
    if (region is None) == (regions is None):
        raise UserError("give --region CHROM:START-END or --regions BED (one of them)")
    if ism_region and method != "ism":
        raise UserError("--ism-region goes with --method ism")
    if mean_center and method != "input-grad":
        raise UserError("--mean-center goes with --method input-grad (it centres the gradient before the input "
                        "multiplies it)")
    if ism_region and regions:
        raise UserError("--ism-region goes with --region; with --regions each BED region is the ISM span")
    for name, value in counts.items():
        if value < 1:
            raise UserError(f"--{name.replace('_', '-')} {value}: must be at least 1")
    if counts["maps_per_backward"] > 1 and not (per_track and method == "input-grad"):
        raise UserError("--maps-per-backward goes with --per-track and --method input-grad")
    if counts["maps_per_backward"] > 1 and bf16:
        raise UserError(f"--maps-per-backward goes without --bf16: {_NO_BATCHED_HALF}; leave it at 1 (a backward "
                        "per track)")
    if plot and not plot.endswith(".png"):
        raise UserError(f"--plot {plot}: expected a .png file")
    for name in (out, plot):
        if name and os.path.exists(name) and not force:
            raise UserError(f"{name} exists; pass --force to replace it")
    if out.endswith(_BIGWIG):
        require_bigwig_writer()
    if out.endswith((".h5", ".hdf5")):
        try:
            import h5py  # noqa: F401
        except ImportError:
            raise UserError("HDF5 output needs h5py (pip install 'enformer-train[variants]'); or write .npz") from None
    if plot:
        try:
            import logomaker  # noqa: F401
        except ImportError:
            raise UserError("--plot needs logomaker (pip install 'enformer-train[attribute]')") from None
    if method == "integrated-gradients":
        try:
            import captum  # noqa: F401
        except ImportError:
            raise UserError("--method integrated-gradients needs captum (pip install 'enformer-train[attribute]')") from None


def _spans(wanted: list[Region], genome: Genome, fasta: str, length: int, method: str,
           ism_span) -> list[tuple[int, int]]:
    """The scored span of each region, after checking it is on the genome and fits the model's input."""
    spans = []
    for r in wanted:
        if r.chrom not in genome:
            close = difflib.get_close_matches(r.chrom, list(genome.lengths), n=3)
            raise UserError(f"{r.source}: {fasta} has no sequence named {r.chrom!r}"
                            + (f"; close: {', '.join(close)}" if close else ""))
        if r.start >= genome.lengths[r.chrom]:
            raise UserError(f"{r.source}: {r.name()} starts past the end of {r.chrom} ({genome.lengths[r.chrom]:,} bp)")
        if r.end - r.start > length:
            raise UserError(f"{r.source}: {r.name()} is {r.end - r.start:,} bp, longer than the model's input "
                            f"({length:,} bp); give regions of at most that")
        spans.append(scored_span(r, length, method, ism_span))
    return spans


def _assemble(partial: str, bounds: list[tuple[int, int]]) -> dict[str, np.ndarray]:
    """Every chunk's rows from OUT.partial/, in region order."""
    parts = []
    for c, (a, b) in enumerate(bounds):
        part = chunks.read_chunk(chunks.chunk_path(partial, c), b - a, list(_ROWS))
        if part is None:
            raise UserError(f"{chunks.chunk_path(partial, c)}: missing or unreadable after every rank finished; "
                            "run the command again to compute it")
        parts.append(part)
    return {k: np.concatenate([p[k] for p in parts]) for k in _ROWS}


def _write_outputs(out: str, plot: str | None, arrays: dict, meta: dict, genome: Genome, wanted: list[Region],
                   names: list[str], target: Target, model, method: str, head: str, bins: str | None,
                   per_track: bool) -> list[str]:
    """`out` (.npz, .h5, or bigWigs) and the --plot figure; the files written."""
    if out.endswith(_BIGWIG):
        written = write_bigwigs(out, genome, arrays, list(genome.lengths))
    else:
        write_arrays(out, arrays, meta)
        written = [out]
    if plot:
        codes = genome.fetch(wanted[0].chrom, int(arrays["span_start"][0]),
                             int(arrays["span_start"][0]) + arrays["scores"].shape[-1])
        shown = names[0] if per_track or len(names) == 1 else f"{len(names)} tracks ({names[0]}, ...)"
        title = f"{method} of {wanted[0].name()}: {head} {shown}, bins {bins or ','.join(map(str, target.bins))}"
        plot_attribution(plot, arrays, codes, 0, model.config.bin_size, flank(model), method, title)
        written.append(plot)
    return written


def _attribute_one(model, genome: Genome, region: Region, span: tuple[int, int], head: str, target: Target,
                   method: str, steps: int, mean_center: bool, rc: bool, pair, bf16: bool, batch_size: int,
                   bar, maps_per_backward: int = 1) -> dict[str, np.ndarray]:
    """One region's rows: its window and span starts, per-base and hypothetical scores, the target's
    value, integrated gradients' delta (else 0), ISM's skipped positions (else 0), and the profile
    (the target tracks' mean prediction over the output bins, for the figure)."""
    length = model.config.sequence_length
    start = window_start(region, length)
    codes = genome.fetch(region.chrom, start, start + length)
    device = next(model.parameters()).device
    k = target.maps
    delta, skipped = np.zeros(k if target.per_track else (), np.float32), 0
    a, b = span[0] - start, span[1] - start
    if method == "ism":
        hypothetical, value, skipped = ism(model, codes, (a, b), head, target, batch_size=batch_size, rc=rc,
                                           strand_pair=pair, autocast=bf16, bar=bar)
    else:
        window = torch.as_tensor(codes[None], device=device)
        if method == "input-grad":
            hyp, val = input_grad(model, window, head, target, mean_center=mean_center, rc=rc, strand_pair=pair,
                                  autocast=bf16, maps_per_backward=maps_per_backward)
            hyp, val = hyp[0], val[0]
        else:
            hyp, val, d = integrated_gradients(model, window, head, target, steps=steps, batch_size=batch_size,
                                               rc=rc, strand_pair=pair, autocast=bf16)
            delta = d.cpu().numpy()
        hypothetical, value = hyp.cpu().numpy(), val.cpu().numpy()
        bar.update(1)
    views = tta_views(rc, max_shift=0)
    pred = predict_codes(model, codes[None], head, views, pair, bf16)[0]  # [T, K]
    profile = pred[:, torch.as_tensor(target.tracks, device=pred.device)].mean(1).cpu().numpy()
    return {"window_start": np.int64(start), "span_start": np.int64(span[0]),
            "scores": per_base(hypothetical, codes[a:b], method).astype(np.float32),
            "hypothetical": hypothetical.astype(np.float32), "prediction": np.asarray(value, np.float32),
            "delta": np.asarray(delta, np.float32), "skipped": np.int64(skipped), "profile": profile.astype(np.float32)}
