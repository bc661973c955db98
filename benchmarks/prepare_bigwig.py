"""`prepare --targets` throughput: regions/s for 1 and 2 worker processes with 50 bigWig tracks.

Writes a random genome (`--chroms` chromosomes of `--chrom-mb` Mb), `--tracks` bigWigs of coverage
like real data (runs of 1-50 bp; half the tracks cover every base, half leave a quarter of the runs
without data, which makes a span's baseline 0 without a median), a regions BED of `--regions` 131,072-bp
regions, then prepares full-size stores (196,608-bp windows, 896 x 128-bp targets) and prints one
table. A separate row splits one process's time into reading the bigWigs and the coverage steps.

    python benchmarks/prepare_bigwig.py [--tracks 50] [--regions 48] [--workers 1 2]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from bigwig_read import write_track  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=50)
    parser.add_argument("--regions", type=int, default=48)
    parser.add_argument("--chroms", type=int, default=2)
    parser.add_argument("--chrom-mb", type=float, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--chunk", type=int, default=8, help="regions per task (prepare's default is 32)")
    args = parser.parse_args()
    from enformer_train.data.formats.coverage import BigWig, read_tracks, region_targets
    from enformer_train.data.producers.coverage_prepare import prepare_coverage

    rng = np.random.default_rng(0)
    size = int(args.chrom_mb * 1e6)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        with open(os.path.join(tmp, "g.fa"), "w") as f:
            for c in range(args.chroms):
                seq = np.frombuffer(b"ACGT", np.uint8)[rng.integers(0, 4, size)].tobytes().decode()
                f.write(f">chr{c + 1}\n" + "".join(seq[i:i + 60] + "\n" for i in range(0, size, 60)))
        import pyBigWig

        with open(os.path.join(tmp, "targets.txt"), "w") as f:
            f.write("index\tidentifier\tfile\tclip\tclip_soft\tscale\tsum_stat\tdescription\n")
            for t in range(args.tracks):
                path = os.path.join(tmp, f"t{t}.bw")
                write_track(path, size, rng, gaps=0.25 if t % 2 else 0.0)  # chr1 only: copy it under every chromosome name
                src = pyBigWig.open(path)
                iv = src.intervals("chr1")
                src.close()
                bw = pyBigWig.open(path, "w")
                bw.addHeader([(f"chr{c + 1}", size) for c in range(args.chroms)])
                starts = [s for s, _, _ in iv]
                ends = [e for _, e, _ in iv]
                vals = [v for _, _, v in iv]
                for c in range(args.chroms):
                    bw.addEntries([f"chr{c + 1}"] * len(iv), starts, ends=ends, values=vals)
                bw.close()
                stat = ("sum", "mean", "sum_sqrt")[t % 3]
                f.write(f"{t}\tT{t}\tt{t}.bw\t768\t384\t1\t{stat}\tsynthetic {t}\n")
        length = 131_072
        with open(os.path.join(tmp, "regions.bed"), "w") as f:
            for r in range(args.regions):
                chrom = f"chr{r % args.chroms + 1}"
                start = int(rng.integers(40_000, size - length - 40_000))
                f.write(f"{chrom}\t{start}\t{start + length}\t{('train', 'train', 'valid', 'test')[r % 4]}\n")
        setup = time.perf_counter() - t0

        rows = []
        for workers in args.workers:
            t0 = time.perf_counter()
            prepare_coverage(os.path.join(tmp, f"store-{workers}"), "human", os.path.join(tmp, "g.fa"),
                             os.path.join(tmp, "targets.txt"), os.path.join(tmp, "regions.bed"),
                             workers=workers, chunk=args.chunk, progress=False)
            dt = time.perf_counter() - t0
            rows.append((f"prepare, {workers} worker{'s' if workers > 1 else ''}", args.regions / dt, dt))

        # one process, 8 regions: reading vs the coverage steps
        tracks = read_tracks(os.path.join(tmp, "targets.txt"))
        bws = [BigWig(t.file) for t in tracks]
        spans = [(f"chr{r % args.chroms + 1}", 100_000 + r * 200_000) for r in range(8)]
        t0 = time.perf_counter()
        for chrom, s in spans:
            for bw in bws:
                bw.values(chrom, s, s + 896 * 128)
        read = time.perf_counter() - t0
        t0 = time.perf_counter()
        for chrom, s in spans:
            region_targets(bws, tracks, chrom, s, s + 896 * 128)
        total = time.perf_counter() - t0
    print(f"{args.tracks} tracks, {args.regions} regions of 131,072 bp -> 196,608-bp windows, 896 x 128-bp targets; "
          f"{os.cpu_count()} CPUs; chunks of {args.chunk}; setup {setup:.0f} s")
    print("| run | regions/s | seconds |\n|---|---|---|")
    for name, per_s, dt in rows:
        print(f"| {name} | {per_s:.2f} | {dt:.1f} |")
    print(f"| one process, per region: reading {read / 8 * 1000:.0f} ms, coverage steps "
          f"{(total - read) / 8 * 1000:.0f} ms | {8 / total:.2f} | {total:.1f} |")


if __name__ == "__main__":
    main()
