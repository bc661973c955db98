"""Training targets from bigWig coverage, computed as Basenji computes them.

The steps follow calico/baskerville's hound_data_read.py (its `--transform_old` is the transform of
the Enformer-era data, our default `basenji`), per region and track:

1. c = the bigWig's base-resolution values over the target span, float32, NaN where the file has no
   data (baskerville rounds them to float16 first; we do not);
2. baseline = nan_to_num(percentile(c, 50)): 0 as soon as the span holds a NaN, as there; and 0 when
   the span has fewer than 8 bins, as there;
3. over blacklist intervals widened by 20 bp each side, c is clipped to [-baseline, baseline];
4. NaN -> baseline;
5. `basenji`: pool each bin by the track's sum_stat, soft clip (x > clip_soft: clip_soft +
   sqrt(x - clip_soft)), clip to [-clip, clip], times scale. `baskerville`: times scale, pool (the
   `_sqrt` statistics as -1 + sqrt(1 + x)), soft clip as clip_soft - 1 + sqrt(x - clip_soft + 1),
   clip to [-clip, clip];
6. clip to float16's range; float16.

Not done: baskerville's dataset-wide `clip_pct` pass (a percentile over all targets of a run), so a
region's targets depend only on that region. Where baskerville differs by accident we say so:
a blacklist interval that starts before the span is clipped over its part inside the span (there a
negative slice start skips it), and `median` pools by the median (there it raises).
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field

import numpy as np

from ...errors import UserError
from ... import files
from .targets import read_targets

POOL_WIDTH = 128
BLACKLIST_WIDEN = 20  # bp added each side of a blacklist interval (baskerville's black_buffer)
TRANSFORMS = ("basenji", "baskerville")
# sum_stat -> transforms that know it (baskerville's names; avg = mean)
SUM_STATS = {"sum": TRANSFORMS, "mean": TRANSFORMS, "avg": TRANSFORMS, "max": TRANSFORMS,
             "median": TRANSFORMS, "peak": TRANSFORMS, "sum_sqrt": TRANSFORMS, "mean_sqrt": TRANSFORMS,
             "avg_sqrt": TRANSFORMS, "sum_exp75": ("baskerville",)}
REQUIRED_COLUMNS = ("identifier", "file", "sum_stat", "description")
_F16 = np.finfo(np.float16)


# --- targets.txt -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Track:
    """One row of a coverage targets.txt."""
    identifier: str
    file: str  # resolved: relative paths are relative to targets.txt
    sum_stat: str
    description: str
    clip: float | None = None
    clip_soft: float | None = None
    scale: float = 1.0
    line: int = 0
    fields: dict = field(default_factory=dict, compare=False)  # every column as written


def _number(value: str | None, where: str, column: str) -> float | None:
    if value is None or value.strip() == "" or value.strip().lower() in ("none", "nan", "na"):
        return None
    try:
        return float(value)
    except ValueError:
        raise UserError(f"{where}: {column} {value!r} is not a number; leave it empty for none") from None


def read_tracks(path: str, transform: str = "basenji") -> list[Track]:
    """The tracks of a Basenji-style targets.txt: tab-separated, a header, columns index (its name may
    be empty), identifier, file, clip, clip_soft, scale, sum_stat, description; other columns are kept
    in `fields`. Empty or missing clip / clip_soft / scale mean none / none / 1."""
    if transform not in TRANSFORMS:
        raise UserError(f"--transform {transform!r}: expected one of {', '.join(TRANSFORMS)}")
    if not files.exists(path):
        raise UserError(f"{path}: no such targets file")
    rows = read_targets(path, REQUIRED_COLUMNS, "index, identifier, file, clip, clip_soft, scale, sum_stat, "
                        "description; clip, clip_soft and scale may be left out")
    base = os.path.dirname(path)
    tracks = []
    for row in rows:
        number = int(row.pop("line"))
        where = f"{path}, line {number}"
        sum_stat = row["sum_stat"].strip()
        if sum_stat not in SUM_STATS:
            raise UserError(f"{where}: unknown sum_stat {sum_stat!r}; expected one of {', '.join(SUM_STATS)}")
        if transform not in SUM_STATS[sum_stat]:
            raise UserError(f"{where}: sum_stat {sum_stat!r} exists only in the baskerville transform; "
                            f"pass --transform baskerville or choose another sum_stat")
        file = row["file"].strip()
        if not file:
            raise UserError(f"{where}: empty file; expected the path of a bigWig")
        if not (os.path.isabs(file) or files.is_url(file)):
            file = os.path.join(base, file)
        scale = _number(row.get("scale"), where, "scale")
        tracks.append(Track(identifier=row["identifier"].strip(), file=file, sum_stat=sum_stat,
                            description=row["description"], clip=_number(row.get("clip"), where, "clip"),
                            clip_soft=_number(row.get("clip_soft"), where, "clip_soft"),
                            scale=1.0 if scale is None else scale, line=number, fields=row))
    if not tracks:
        raise UserError(f"{path}: a header but no tracks")
    return tracks


# --- blacklist ---------------------------------------------------------------------------------

def read_blacklist(path: str | None, widen: int = BLACKLIST_WIDEN) -> dict[str, np.ndarray]:
    """{chrom: [n, 2] int64 (start, end)} sorted by start, each interval widened by `widen` bp each
    side (start not below 0). None -> {}."""
    if path is None:
        return {}
    if not files.exists(path):
        raise UserError(f"{path}: no such blacklist BED file")
    by_chrom: dict[str, list[tuple[int, int]]] = {}
    for number, line in enumerate(files.read_text(path).splitlines(), start=1):
        if not line.strip() or line.startswith(("#", "track", "browser")):
            continue
        fields = line.split()
        if len(fields) < 3:
            raise UserError(f"{path}, line {number}: expected chrom, start, end; found {len(fields)} fields")
        try:
            start, end = int(fields[1]), int(fields[2])
        except ValueError:
            raise UserError(f"{path}, line {number}: start and end must be integers") from None
        by_chrom.setdefault(fields[0], []).append((max(0, start - widen), end + widen))
    return {chrom: np.array(sorted(v), dtype=np.int64).reshape(-1, 2) for chrom, v in by_chrom.items()}


def blacklist_in(blacklist: dict[str, np.ndarray], chrom: str, start: int, end: int) -> np.ndarray:
    """[n, 2] intervals of `blacklist` overlapping chrom:start-end, relative to start, cut to the span."""
    intervals = blacklist.get(chrom)
    if intervals is None or not len(intervals):
        return np.zeros((0, 2), dtype=np.int64)
    hit = intervals[(intervals[:, 0] < end) & (intervals[:, 1] > start)]
    return np.clip(hit - start, 0, end - start)


# --- the steps, on arrays ------------------------------------------------------------------------

def baseline(c: np.ndarray, pool_width: int = POOL_WIDTH) -> float:
    """Step 2: the median of [span] values, 0 if any is NaN or the span has fewer than 8 bins."""
    if c.size // pool_width < 8 or np.isnan(c).any():  # percentile's NaN, nan_to_num'd, without the sort
        return 0.0
    return float(median(c))


def median(c: np.ndarray) -> np.floating:
    """np.percentile(c, 50) of NaN-free [n] values to the last bit (its interpolation b - (b - a) / 2
    between the middle order statistics a and b). Coverage mostly comes in runs of equal values: then
    the order statistics are found among the runs (their values sorted, weighted by their lengths),
    several times faster than np.percentile, which is used when runs are short."""
    n, k = c.size, c.size // 2
    changes = c[1:] != c[:-1]
    if np.count_nonzero(changes) > n // 8:
        return np.percentile(c, 50)
    starts = np.concatenate([[0], np.flatnonzero(changes) + 1])
    values = c[starts]
    order = np.argsort(values, kind="stable")
    ends = np.cumsum(np.diff(np.append(starts, n))[order])  # sorted values [ends[j-1], ends[j]) are values[order[j]]
    ordered = values[order]
    b = ordered[np.searchsorted(ends, k, side="right")]
    if n % 2:
        return b
    a = ordered[np.searchsorted(ends, k - 1, side="right")]
    return b - (b - a) * c.dtype.type(0.5)


def clip_blacklisted(c: np.ndarray, intervals: np.ndarray, base: float) -> np.ndarray:
    """Step 3, in place: c clipped to [-base, base] over each [start, end) of `intervals` [n, 2]."""
    for s, e in intervals:
        np.clip(c[s:e], -base, base, out=c[s:e])
    return c


def fill_nan(c: np.ndarray, base: float) -> np.ndarray:
    """Step 4, in place: NaN -> base."""
    c[np.isnan(c)] = base
    return c


def pool(c: np.ndarray, sum_stat: str, transform: str = "basenji", pool_width: int = POOL_WIDTH) -> np.ndarray:
    """[span] -> [span / pool_width] float32 by `sum_stat`, as the transform defines the _sqrt forms."""
    x = c.reshape(-1, pool_width)
    if sum_stat in ("sum", "sum_sqrt", "sum_exp75"):
        y = x.sum(axis=1, dtype=np.float32)
    elif sum_stat in ("mean", "avg", "mean_sqrt", "avg_sqrt", "peak"):
        y = x.mean(axis=1, dtype=np.float32)
    elif sum_stat == "max":
        y = x.max(axis=1).astype(np.float32)
    elif sum_stat == "median":
        y = np.median(x, axis=1).astype(np.float32)
    else:
        raise ValueError(f"unknown sum_stat {sum_stat!r}")
    if sum_stat in ("sum_sqrt", "mean_sqrt", "avg_sqrt"):
        # the Enformer-era data's "sqrt" is a 3/4 power; the new transform's is a shifted sqrt
        y = y ** 0.75 if transform == "basenji" else -1 + np.sqrt(1 + y)
    elif sum_stat == "sum_exp75":
        y = -1 + (1 + y) ** 0.75
    elif sum_stat == "peak":
        y = np.clip(np.sqrt(y * 4), 0, 1)
    return y.astype(np.float32, copy=False)


def soft_clip(y: np.ndarray, clip_soft: float | None, transform: str = "basenji") -> np.ndarray:
    """Above clip_soft, the excess is square-rooted (baskerville: shifted so the slope is 1/2 at the knee)."""
    if clip_soft is None:
        return y
    y = y.copy()
    over = y > clip_soft
    if transform == "basenji":
        y[over] = clip_soft + np.sqrt(y[over] - clip_soft)
    else:
        y[over] = clip_soft - 1 + np.sqrt(y[over] - clip_soft + 1)
    return y


def transform_bins(c: np.ndarray, track: Track, transform: str = "basenji",
                   pool_width: int = POOL_WIDTH) -> np.ndarray:
    """Steps 5 and 6: [span] float32 base values (no NaN) -> [span / pool_width] float16 targets."""
    if transform == "basenji":
        y = soft_clip(pool(c, track.sum_stat, transform, pool_width), track.clip_soft, transform)
        if track.clip is not None:
            y = np.clip(y, -track.clip, track.clip)
        y = np.float32(track.scale) * y
    elif transform == "baskerville":
        y = pool(np.float32(track.scale) * c, track.sum_stat, transform, pool_width)
        y = soft_clip(y, track.clip_soft, transform)
        if track.clip is not None:
            y = np.clip(y, -track.clip, track.clip)
    else:
        raise ValueError(f"unknown transform {transform!r}")
    return np.clip(y, _F16.min, _F16.max).astype(np.float16)


def coverage_targets(c: np.ndarray, track: Track, intervals: np.ndarray | None = None,
                     transform: str = "basenji", pool_width: int = POOL_WIDTH) -> np.ndarray:
    """Steps 2-6: [span] float32 values with NaN (step 1's read) -> [span / pool_width] float16.
    `intervals` [n, 2]: the widened blacklist inside the span, relative to its start."""
    c = np.array(c, dtype=np.float32)  # a copy: the steps work in place
    if c.size % pool_width:
        raise ValueError(f"span of {c.size} bp is not a multiple of {pool_width}")
    base = baseline(c, pool_width)
    if intervals is not None and len(intervals):
        clip_blacklisted(c, intervals, base)
    fill_nan(c, base)
    return transform_bins(c, track, transform, pool_width)


# --- writing bigWigs ---------------------------------------------------------------------------

def require_bigwig_writer():
    """pyBigWig, which writes bigWigs (pybigtools here only reads them); a UserError saying how to
    get it, raised before any work where a command will write one."""
    try:
        import pyBigWig  # optional: the bigwig extra
    except ImportError:
        raise UserError("writing bigWig files needs pyBigWig (pip install 'enformer-train[bigwig]'); "
                        "or write .npz") from None
    return pyBigWig


class BigWigWriter:
    """A bigWig being written at `path` over chromosomes [(name, length)], entries in genome order:
    `steps` (values every `step` bases from `start`, each covering `step`) or `bases` (one value
    per listed base). Positions past a chromosome's ends and NaN values are left out."""

    def __init__(self, path: str, chroms: list[tuple[str, int]]):
        self.lengths = dict(chroms)
        self._file = require_bigwig_writer().open(path, "w")
        self._file.addHeader(list(chroms))

    def steps(self, chrom: str, start: int, values: np.ndarray, step: int) -> None:
        starts = start + step * np.arange(len(values))
        keep = (starts >= 0) & (starts + step <= self.lengths[chrom])
        if keep.any():
            first = int(np.argmax(keep))
            last = len(keep) - int(np.argmax(keep[::-1]))
            self._file.addEntries(chrom, int(starts[first]), values=[float(v) for v in values[first:last]],
                                  span=step, step=step)

    def bases(self, chrom: str, start: int, values: np.ndarray) -> None:
        positions = start + np.arange(values.shape[0])
        keep = (positions >= 0) & (positions < self.lengths[chrom]) & np.isfinite(values)
        if keep.any():
            self._file.addEntries([chrom] * int(keep.sum()), positions[keep].tolist(),
                                  ends=(positions[keep] + 1).tolist(), values=values[keep].astype(float).tolist())

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- reading bigWigs ---------------------------------------------------------------------------

def _backend():
    """pybigtools where installed (1.5x faster in benchmarks/bigwig_read.py), else pyBigWig."""
    try:
        import pybigtools  # optional: the bigwig extra

        return "pybigtools", pybigtools
    except ImportError:
        pass
    try:
        import pyBigWig  # optional: the bigwig extra

        return "pyBigWig", pyBigWig
    except ImportError:
        raise UserError("reading bigWig files needs pybigtools (or pyBigWig): "
                        "pip install 'enformer-train[bigwig]'") from None


class BigWig:
    """One bigWig file, opened once: `chroms` {name: length}; `values(chrom, start, end)` -> [end -
    start] float32, NaN where the file has no data. `where` names the track in error messages."""

    def __init__(self, path: str, where: str = "", backend: str | None = None):
        """`backend`: 'pybigtools' or 'pyBigWig' (benchmarks compare them); default: the faster installed."""
        self.path = path
        where = where or path
        if not os.path.isfile(path):
            raise UserError(f"{where}: bigWig {path} does not exist")
        self.backend, module = (backend, importlib.import_module(backend)) if backend else _backend()
        try:
            self._file = module.open(path)
            if self.backend == "pyBigWig" and (self._file is None or not self._file.isBigWig()):
                raise RuntimeError("not a bigWig")
            self.chroms = dict(self._file.chroms())
        except UserError:
            raise
        except Exception as e:  # each library raises its own types for a damaged or foreign file
            raise UserError(f"{where}: cannot read {path} as a bigWig ({type(e).__name__}: {e}); "
                            f"check the file (e.g. bigWigInfo) or convert it again") from None

    def values(self, chrom: str, start: int, end: int) -> np.ndarray:
        if self.backend == "pybigtools":
            out = self._file.values(chrom, start, end, fillna=None)  # NaN where no data
        else:
            out = self._file.values(chrom, start, end, numpy=True)
        return np.asarray(out, dtype=np.float32)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def check_chromosomes(bigwig: BigWig, chroms: dict[str, str], where: str) -> None:
    """Every chromosome in `chroms` ({name: where it is used}) must be in the bigWig; the usual cause of
    a miss is naming (chr1 vs 1), which the message says when it is so."""
    for chrom, used in chroms.items():
        if chrom in bigwig.chroms:
            continue
        other = chrom[3:] if chrom.startswith("chr") else "chr" + chrom
        if other in bigwig.chroms:
            hint = (f"it names chromosomes like {other!r} where the regions say {chrom!r} (chr1 vs 1 "
                    f"naming); rename the chromosomes of the bigWig or of the FASTA and regions")
        else:
            some = ", ".join(list(bigwig.chroms)[:4])
            hint = f"it has {some}{', ...' if len(bigwig.chroms) > 4 else ''}; is it from another genome build?"
        raise UserError(f"{where}: bigWig {bigwig.path} has no chromosome {chrom!r} (used by {used}); {hint}")


def region_targets(bigwigs: list[BigWig], tracks: list[Track], chrom: str, start: int, end: int,
                   blacklist: dict[str, np.ndarray] | None = None, transform: str = "basenji",
                   pool_width: int = POOL_WIDTH) -> np.ndarray:
    """[bins, tracks] float16 targets of the span chrom:start-end: one read per track."""
    intervals = blacklist_in(blacklist or {}, chrom, start, end)
    out = np.empty(((end - start) // pool_width, len(tracks)), dtype=np.float16)
    for t, (bw, track) in enumerate(zip(bigwigs, tracks)):
        out[:, t] = coverage_targets(bw.values(chrom, start, end), track, intervals, transform, pool_width)
    return out
