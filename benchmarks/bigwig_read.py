"""Which bigWig reader `prepare --targets` should use: pyBigWig or pybigtools, measured.

Writes a few bigWigs like real coverage (variable-step runs of 1-50 bp, NaN gaps, one chromosome of
`--chrom-mb` Mb), then reads `--regions` random target spans of 896 x 128 bp from each, one call per
span (how prepare reads: once per region and track, never per bin), with each library. Prints one
table: spans/s and Mbp/s per library (best of `--repeats`, alternating), and whether their values agree (NaN where a file has no data).

    python benchmarks/bigwig_read.py [--tracks 4] [--regions 200] [--chrom-mb 20]
"""
from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time

import numpy as np


def write_track(path: str, chrom_len: int, rng: np.random.Generator, gaps: float = 0.25) -> None:
    import pyBigWig

    # Runs of 1-50 bp, a fraction `gaps` of them without data, values like read coverage.
    lengths = rng.integers(1, 51, chrom_len // 20)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    keep = (starts + lengths <= chrom_len) & (rng.random(starts.size) >= gaps)
    starts, lengths = starts[keep], lengths[keep]
    values = rng.gamma(0.5, 4.0, starts.size)
    bw = pyBigWig.open(path, "w")
    bw.addHeader([("chr1", chrom_len)], maxZooms=10)
    bw.addEntries(["chr1"] * starts.size, starts.tolist(), ends=(starts + lengths).tolist(), values=values.tolist())
    bw.close()


def read(backend: str, paths, spans):
    """Every span of every track through the project's reader (data/formats/coverage.py) on `backend`."""
    from enformer_train.data.formats.coverage import BigWig

    out = []
    for path in paths:
        with BigWig(path, backend=backend) as bw:
            out.append([bw.values("chr1", s, e) for s, e in spans])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=4)
    parser.add_argument("--regions", type=int, default=200)
    parser.add_argument("--chrom-mb", type=float, default=20)
    parser.add_argument("--span", type=int, default=896 * 128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    chrom_len = int(args.chrom_mb * 1e6)
    with tempfile.TemporaryDirectory() as tmp:
        paths = [os.path.join(tmp, f"t{i}.bw") for i in range(args.tracks)]
        for path in paths:
            write_track(path, chrom_len, rng)
        starts = rng.integers(0, chrom_len - args.span, args.regions)
        spans = [(int(s), int(s) + args.span) for s in starts]
        readers = {name: functools.partial(read, name) for name in ("pyBigWig", "pybigtools")}
        results, best = {}, {name: float("inf") for name in readers}
        for name, fn in readers.items():
            fn(paths, spans[:5])  # imports, file headers and the page cache warm for both
        for _ in range(args.repeats):  # alternate the libraries, keep each one's best time
            for name, fn in readers.items():
                t0 = time.perf_counter()
                results[name] = fn(paths, spans)
                best[name] = min(best[name], time.perf_counter() - t0)
        n = args.tracks * args.regions
        rows = [(name, n / dt, n * args.span / dt / 1e6) for name, dt in best.items()]
        a, b = results["pyBigWig"], results["pybigtools"]
        agree = all(np.array_equal(x, y, equal_nan=True) for ta, tb in zip(a, b) for x, y in zip(ta, tb))
    print(f"{args.tracks} tracks x {args.regions} spans of {args.span} bp, chromosome {args.chrom_mb:g} Mb; "
          f"values identical (NaN gaps included): {agree}")
    print("| library | spans/s | Mbp/s |\n|---|---|---|")
    for name, per_s, mbp in rows:
        print(f"| {name} | {per_s:.1f} | {mbp:.1f} |")


if __name__ == "__main__":
    main()
