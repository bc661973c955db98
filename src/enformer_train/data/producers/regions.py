"""Training regions for bigWig coverage: tiling a genome (`enformer-train regions`) and checking a
regions BED against the windows that `prepare --targets` will cut from it.

A regions BED is Basenji's sequences.bed: chrom, start, end, split (train/valid/test), all regions the
same length. The input window (`context` bp) and the target span (target_length x 128 bp) are both
centred on each region.
"""
from __future__ import annotations

import sys

import numpy as np

from ...errors import UserError
from ..formats.coverage import POOL_WIDTH, blacklist_in, read_blacklist
from ..formats.genome import N, Genome
from ..formats.intervals import SPLITS, Region, read_bed


def tile(genome: Genome, length: int, stride: int | None = None, valid_chroms=(), test_chroms=(),
         max_n: float = 0.35, blacklist: dict[str, np.ndarray] | None = None) -> list[Region]:
    """Windows of `length` bp every `stride` bp (default: `length`, no overlap) from each chromosome's
    start, whole windows only, chromosomes in FASTA order. A window whose N and blacklisted bases
    together exceed `max_n` of it is skipped. Split by chromosome: valid_chroms -> valid,
    test_chroms -> test, the rest train."""
    stride = stride or length
    if length <= 0 or stride <= 0:
        raise UserError("--length and --stride must be positive")
    if not 0 <= max_n <= 1:
        raise UserError(f"--max-n {max_n}: expected a fraction between 0 and 1")
    for flag, chroms in (("--valid-chroms", valid_chroms), ("--test-chroms", test_chroms)):
        for chrom in chroms:
            if chrom not in genome.lengths:
                raise UserError(f"{flag}: {chrom!r} is not a sequence of {genome.path}")
    both = set(valid_chroms) & set(test_chroms)
    if both:
        raise UserError(f"{sorted(both)[0]!r} is in both --valid-chroms and --test-chroms")
    blacklist = blacklist or {}
    out = []
    for chrom, size in genome.lengths.items():
        split = "valid" if chrom in valid_chroms else "test" if chrom in test_chroms else "train"
        for start in range(0, size - length + 1, stride):
            bad = genome.fetch(chrom, start, start + length) == N
            for s, e in blacklist_in(blacklist, chrom, start, start + length):
                bad[s:e] = True
            if bad.mean() <= max_n:
                out.append(Region(chrom, start, start + length, split, 0))
    return out


def run_regions(fasta: str, length: int, stride: int | None = None, valid_chroms=(), test_chroms=(),
                max_n: float = 0.35, blacklist: str | None = None, out=None) -> None:
    """`enformer-train regions`: the genome tiled into regions of `length` bp (every `stride`), each
    with its split by chromosome, as a BED on `out` (stdout); the counts on stderr."""
    out = out or sys.stdout
    genome = Genome(fasta)
    regions = tile(genome, length, stride, valid_chroms, test_chroms, max_n, read_blacklist(blacklist, widen=0))
    if not regions:
        raise UserError(f"{fasta}: no region of {length} bp passes --max-n {max_n}; "
                        f"use shorter regions or a larger --max-n")
    for r in regions:
        out.write(f"{r.chrom}\t{r.start}\t{r.end}\t{r.split}\n")
    counts = {s: sum(r.split == s for r in regions) for s in SPLITS}
    print(f"{len(regions)} regions of {length} bp: " + ", ".join(f"{s} {n}" for s, n in counts.items()),
          file=sys.stderr)


def read_regions(path: str, genome: Genome, sequence_length: int, target_length: int,
                 pool_width: int = POOL_WIDTH) -> list[Region]:
    """The regions of a regions BED, checked for `prepare --targets`: one length for all, windows and
    target spans centred (even differences), each target span inside its chromosome."""
    regions = read_bed(path, genome)
    if not regions:
        raise UserError(f"{path}: no regions")
    length = len(regions[0])
    span = target_length * pool_width
    for region in regions:
        where = f"{path}, line {region.line}"
        if len(region) != length:
            raise UserError(f"{where}: region of {len(region)} bp, but line {regions[0].line} has {length} bp; "
                            f"all regions must have the same length")
        start = region.start + (length - span) // 2
        if start < 0 or start + span > genome.lengths[region.chrom]:
            raise UserError(f"{where}: the target span {region.chrom}:{start}-{start + span} "
                            f"({target_length} x {pool_width} bp centred on the region) leaves the chromosome "
                            f"({genome.lengths[region.chrom]} bp); drop the region or move it inward")
    for name, size in (("--context", sequence_length), ("--target-length x 128", span)):
        if (length - size) % 2:
            raise UserError(f"{name} ({size} bp) differs from the {length}-bp regions of {path} by an odd number, "
                            f"so it cannot be centred on them; use an even difference")
    return regions


def target_start(region: Region, target_length: int, pool_width: int = POOL_WIDTH) -> int:
    """First base of the target span centred on the region."""
    return region.start + (len(region) - target_length * pool_width) // 2
