"""Reading a VCF for scoring, in one streaming pass: records become `Variant`s one alternative allele
at a time, checked against the FASTA as they come, and are cut into chunks; nothing holds the whole
file (a 10M-line VCF is read again, not kept, when a later step needs its records)."""
from __future__ import annotations

import gzip
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np

from ..data.formats.genome import Genome, decode, encode
from ..errors import UserError
from .names import NameMap

REF_MISMATCH = ("error", "skip", "warn", "flip", "flip-skip")
_ALLELE = re.compile(r"^[ACGTNacgtn]+$")


@dataclass(frozen=True)
class Variant:
    """One alternative allele of a VCF record."""

    chrom: str  # as the VCF writes it (and the output repeats it)
    pos: int  # VCF POS, 1-based
    id: str
    ref: str
    alt: str
    line: int  # line of the VCF file
    fasta_chrom: str = ""  # the FASTA's name for it (`1` in the VCF, `chr1` in the FASTA)
    flipped: bool = False  # the FASTA has ALT, not REF: scored the other way round
    ref_written: bool = False  # the FASTA has neither (--ref-mismatch warn): REF written into the reference window

    @property
    def pos0(self) -> int:
        return self.pos - 1


@dataclass
class Counts:
    """What a pass over the VCF skipped, flipped or renamed (the summary line says it)."""

    symbolic: int = 0  # <DEL>, *, breakends, '.': no sequence to put in a window
    ref_mismatch: int = 0  # skipped (--ref-mismatch skip, flip-skip) or kept with a warning (warn)
    flipped: int = 0  # the FASTA has ALT (--ref-mismatch flip, flip-skip)
    variants: int = 0  # kept for scoring
    renamed: str = ""  # '1 -> chr1, ...' when the VCF's chromosome names were mapped to the FASTA's
    # the longest UTF-8 ID, chromosome and alleles (the .h5 stores them as fixed-length bytes)
    widths: dict = field(default_factory=lambda: {"id": 1, "chrom": 1, "ref": 1, "alt": 1})


def _is_symbolic(allele: str) -> bool:
    return allele in ("*", ".") or allele.startswith("<") or "[" in allele or "]" in allele


def open_text(path: str, what: str = "VCF"):
    """A text file, plain or gzip/bgzip (many gzip members, read as one stream), as UTF-8."""
    try:
        with open(path, "rb") as f:
            magic = f.read(2)
    except FileNotFoundError:
        raise UserError(f"{path}: no such {what} file") from None
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def records(path: str, counts: Counts | None = None) -> Iterator[Variant]:
    """The VCF's variants, one per alternative allele, in file order (symbolic alleles counted and
    left out). A malformed line is a UserError naming it."""
    counts = counts if counts is not None else Counts()
    with open_text(path) as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line or line.startswith("#"):
                continue
            fields = line.split("\t", 5)
            where = f"{path}, line {number}"
            if len(fields) < 5:
                raise UserError(f"{where}: {len(fields)} tab-separated field(s); expected at least 5 "
                                f"(CHROM POS ID REF ALT)")
            chrom, pos, vid, ref, alts = fields[:5]
            if not pos.isdigit() or int(pos) < 1:
                raise UserError(f"{where}: POS {pos!r} is not a positive integer (VCF POS is 1-based)")
            if not _ALLELE.match(ref):
                raise UserError(f"{where}: REF {ref!r} is not a sequence of A, C, G, T, N")
            found = []  # the whole record is checked before any of its alleles is used
            for alt in alts.split(","):
                if _is_symbolic(alt):
                    counts.symbolic += 1
                    continue
                if not _ALLELE.match(alt):
                    raise UserError(f"{where}: ALT {alt!r} is not a sequence of A, C, G, T, N nor a symbolic allele")
                if alt.upper() == ref.upper():
                    raise UserError(f"{where}: ALT {alt!r} is REF; a variant must change the sequence")
                name = vid if vid not in ("", ".") else f"{chrom}:{pos}:{ref.upper()}:{alt.upper()}"
                found.append(Variant(chrom, int(pos), name, ref.upper(), alt.upper(), number))
            yield from found


def checked(variants: Iterable[Variant], genome: Genome, vcf: str, policy: str = "error",
            counts: Counts | None = None, warn: bool = True) -> Iterator[Variant]:
    """The variants as they are scored, their chromosomes named as the FASTA names them (`1` for
    `chr1` and back, where one spelling is in the FASTA). A chromosome not in the FASTA is an error
    naming the line. A REF that differs from the FASTA is one too, unless `policy` is 'skip' (drop
    it), 'warn' (keep it with REF written into its reference window, say so on stderr when `warn`),
    or 'flip' / 'flip-skip': where the FASTA has ALT instead, the record is flipped (scored from the
    FASTA's allele to REF, so a score still means VCF ALT minus VCF REF); where it has neither,
    'flip' stops and 'flip-skip' drops it."""
    counts = counts if counts is not None else Counts()
    names = NameMap(genome.lengths)
    warned = 0
    for v in variants:
        chrom = names(v.chrom)
        if chrom is None:
            listed = list(genome.lengths)
            raise UserError(f"{vcf}, line {v.line}: chromosome {v.chrom!r} is not in {genome.path}, nor another "
                            f"spelling of it (with or without 'chr'); its sequences are {', '.join(listed[:5])}"
                            f"{', ...' if len(listed) > 5 else ''}")
        counts.renamed = names.describe()
        v = replace(v, fasta_chrom=chrom)
        found = genome.fetch(chrom, v.pos0, v.pos0 + len(v.ref))
        if not np.array_equal(found, encode(v.ref)):
            if policy in ("flip", "flip-skip") and np.array_equal(
                    genome.fetch(chrom, v.pos0, v.pos0 + len(v.alt)), encode(v.alt)):
                counts.flipped += 1
                v = replace(v, flipped=True)
            elif policy in ("error", "flip"):
                also = " nor ALT" if policy == "flip" else ""
                advice = "flip-skip|warn" if policy == "flip" else "skip|warn|flip"
                raise UserError(f"{vcf}, line {v.line}: REF {v.ref}{also} but {genome.path} has {decode(found)} at "
                                f"{v.chrom}:{v.pos} (1-based); check the genome build, or pass --ref-mismatch {advice}")
            else:
                counts.ref_mismatch += 1
                if policy in ("skip", "flip-skip"):
                    continue
                if warn and warned < 10:
                    print(f"warning: {vcf}, line {v.line}: REF {v.ref} but the FASTA has {decode(found)}; scored "
                          f"with REF written into the reference window", file=sys.stderr)
                warned += 1
                v = replace(v, ref_written=True)
        counts.variants += 1
        for key, text in (("id", v.id), ("chrom", v.chrom), ("ref", v.ref), ("alt", v.alt)):
            counts.widths[key] = max(counts.widths[key], len(text.encode("utf-8")))
        yield v


def chunked(variants: Iterable[Variant], size: int) -> Iterator[list[Variant]]:
    """Consecutive chunks of about `size` variants, cut only where the position changes, so the
    alleles of a position share one reference prediction."""
    chunk: list[Variant] = []
    for v in variants:
        if len(chunk) >= size and (v.chrom, v.pos) != (chunk[-1].chrom, chunk[-1].pos):
            yield chunk
            chunk = []
        chunk.append(v)
    if chunk:
        yield chunk


class Vcf:
    """A VCF read against a FASTA, pass after pass: `chunks()` streams the scored variants in chunks;
    `counts` holds the last pass's counts."""

    def __init__(self, path: str, genome: Genome, policy: str, chunk_size: int):
        self.path, self.genome, self.policy, self.chunk_size = path, genome, policy, chunk_size
        self.counts = Counts()
        self._passes = 0

    def chunks(self) -> Iterator[list[Variant]]:
        self.counts = Counts()
        warn = self._passes == 0  # the REF warnings once, not once a pass
        self._passes += 1
        found = checked(records(self.path, self.counts), self.genome, self.path, self.policy, self.counts, warn)
        yield from chunked(found, self.chunk_size)
