"""The windows a variant is scored on.

For a VCF record at POS (1-based), pos0 = POS - 1 and, with L the model's input length:
- the reference window is the FASTA's [pos0 - L/2, pos0 + L/2) (N past a chromosome's ends), so the
  variant's first base sits at index L/2, as in DeepMind's Enformer colab (kipoiseq's
  Interval.resize); `--center basenji` puts it at L/2 - 1, as basenji and baskerville do;
- the alternative window keeps the bases left of pos0, then the ALT allele in place of the REF bases,
  then the FASTA after REF, trimmed or extended on the right to exactly L bases: an insertion pushes
  bases out of the right end, a deletion pulls the genome's next bases in. (baskerville also pushes
  an insertion's excess out on the right, but fills a deletion's gap at the right end with N and adds
  predictions shifted by the indel's length; basenji trims an insertion evenly from both ends.)
- a shift s (`--shifts`) moves the window s bases left on the genome, so the variant sits s bases
  further right in it, the same in the reference and the alternative window (baskerville shifts the
  one-hot sequence and fills the end with N; here the genome's bases fill it).
"""
from __future__ import annotations

import numpy as np

from ..data.formats.genome import Genome, encode
from .vcf import Variant

CENTERS = {"project": 0, "basenji": 1}  # how far left of index L/2 the variant's first base sits


def variant_index(length: int, center: str, shift: int) -> int:
    """Index of the variant's first base in a window of `length` bases."""
    return length // 2 - CENTERS[center] + shift


def allele_window(genome: Genome, chrom: str, pos0: int, replaced: int, allele: str, length: int,
                  left: int) -> np.ndarray:
    """[length] codes: the `left` bases before pos0, then `allele` in place of the `replaced` bases
    from pos0 on, then the FASTA, the right side trimmed (a longer allele) or extended (a shorter one)
    to keep `length` bases. With no allele and nothing replaced, the FASTA's window."""
    before = genome.fetch(chrom, pos0 - left, pos0)
    codes = encode(allele)[:length - left]
    after = pos0 + replaced
    right = genome.fetch(chrom, after, after + length - left - codes.size)
    return np.concatenate([before, codes, right])


def reference_window(genome: Genome, variant: Variant, length: int, left: int) -> np.ndarray:
    """[length] codes a score subtracts from: the FASTA's window with the variant's first base at
    index `left`, or with REF written in where the FASTA does not have it (--ref-mismatch warn)."""
    chrom = variant.fasta_chrom or variant.chrom
    if variant.ref_written:
        return allele_window(genome, chrom, variant.pos0, len(variant.ref), variant.ref, length, left)
    return allele_window(genome, chrom, variant.pos0, 0, "", length, left)


def alternative_window(genome: Genome, variant: Variant, length: int, left: int) -> np.ndarray:
    """[length] codes of the other allele: ALT in place of REF, or for a flipped variant REF in place
    of the FASTA's ALT (the caller then scores it as the reference)."""
    chrom = variant.fasta_chrom or variant.chrom
    if variant.flipped:
        return allele_window(genome, chrom, variant.pos0, len(variant.alt), variant.ref, length, left)
    return allele_window(genome, chrom, variant.pos0, len(variant.ref), variant.alt, length, left)
