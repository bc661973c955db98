"""Basenji's sequences.bed: chrom, start, end, split (0-based, end exclusive), one region a line.

Row i of a split (counting only that split's rows, in file order) is record i of that split's
TFRecords.
"""
from __future__ import annotations

from dataclasses import dataclass

from ...errors import UserError
from ... import files

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Region:
    chrom: str
    start: int
    end: int
    split: str
    line: int  # line number in the BED file, from 1

    def __len__(self) -> int:
        return self.end - self.start


def check_splits(splits: tuple[str, ...]) -> tuple[str, ...]:
    """--splits: a non-empty subset of SPLITS, else a UserError."""
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        raise UserError(f"--splits: unknown split {unknown[0] if unknown else '(none)'!r}; "
                        f"expected a comma-separated subset of {','.join(SPLITS)}")
    return splits


def read_bed(path: str, genome=None, splits=SPLITS) -> list[Region]:
    """All regions of a sequences.bed, checked (against `genome`'s chromosome lengths when given).

    An unknown chromosome, an end beyond the chromosome, start >= end, a negative start or a split
    not in `splits` is a UserError naming the line.
    """
    regions = []
    text = files.read_text(path)
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith(("#", "track", "browser")):
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        where = f"{path}, line {number}"
        if len(fields) < 4:
            raise UserError(f"{where}: expected 4 columns (chrom, start, end, split), found {len(fields)}")
        chrom, start, end, split = fields[0], fields[1], fields[2], fields[3].strip()
        try:
            start, end = int(start), int(end)
        except ValueError:
            raise UserError(f"{where}: start and end must be integers, found {fields[1]!r} and {fields[2]!r}") from None
        if start < 0 or start >= end:
            raise UserError(f"{where}: start {start} must be >= 0 and less than end {end}")
        if split not in splits:
            raise UserError(f"{where}: unknown split {split!r}; expected one of {', '.join(splits)}")
        if genome is not None:
            if chrom not in genome.lengths:
                raise UserError(f"{where}: chromosome {chrom!r} is not in the genome {genome.path}; "
                                f"check that the FASTA is the one these regions were made from")
            if end > genome.lengths[chrom]:
                raise UserError(f"{where}: end {end} is beyond the end of {chrom} "
                                f"({genome.lengths[chrom]} bp in {genome.path}); wrong genome build?")
        regions.append(Region(chrom, start, end, split, number))
    return regions


def by_split(regions: list[Region]) -> dict[str, list[Region]]:
    """Regions grouped by split, each group in file order (row i = record i)."""
    out: dict[str, list[Region]] = {}
    for region in regions:
        out.setdefault(region.split, []).append(region)
    return out
