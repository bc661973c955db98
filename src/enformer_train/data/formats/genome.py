"""A FASTA genome with random access through its .fai index, and the base <-> code mapping.

A plain FASTA is read by the small reader below; a bgzipped one (hg38.fa.gz with .fai and .gzi, as
genomes are usually kept) through pyfaidx. A plain-gzip file cannot be read at random and is refused
with the command that fixes it.

Codes: A=0, C=1, G=2, T=3, anything else (N, IUPAC ambiguity codes) = 4. Lower case (soft-masked
repeats) reads as upper case. One-hot in the ACGT channel order makes N the all-zero row, and the
complement of code c < 4 is 3 - c.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np

from ...errors import UserError

N = 4
BASES = b"ACGTN"

_CODE = np.full(256, N, dtype=np.uint8)
for _code, _base in enumerate(b"ACGT"):
    _CODE[_base] = _code
    _CODE[_base + 32] = _code  # lower case


def encode(sequence: str | bytes) -> np.ndarray:
    """'ACGTN' text -> [length] uint8 codes (case-insensitive; non-ACGT -> 4)."""
    if isinstance(sequence, str):
        sequence = sequence.encode("ascii")
    return _CODE[np.frombuffer(sequence, dtype=np.uint8)]


def decode(codes: np.ndarray) -> str:
    """[length] codes -> 'ACGTN' text."""
    return np.frombuffer(BASES, dtype=np.uint8)[np.asarray(codes)].tobytes().decode("ascii")


@dataclass(frozen=True)
class _Entry:
    length: int
    offset: int  # byte offset of the first base
    line_bases: int
    line_width: int  # bases plus the newline bytes


def build_fai(path: str) -> list[tuple[str, _Entry]]:
    """Index a FASTA file (samtools faidx format). Every line of a sequence but its last must have
    the same length; an irregular line is an error naming it."""
    entries: list[tuple[str, _Entry]] = []
    name = None
    seen: set[str] = set()
    offset = line_bases = line_width = length = 0
    short_line = 0  # line number of a line shorter than line_bases, which must be the last
    with open(path, "rb") as f:
        pos = 0
        for number, line in enumerate(f, start=1):
            width = len(line)
            if line.startswith(b">"):
                if name is not None:
                    entries.append((name, _Entry(length, offset, line_bases, line_width)))
                fields = line[1:].split()
                if not fields:
                    raise UserError(f"{path}, line {number}: a '>' header without a name; fix the FASTA file")
                name = fields[0].decode("utf-8", "replace")
                if name in seen:
                    raise UserError(f"{path}, line {number}: sequence {name!r} appears twice; fix the FASTA file")
                seen.add(name)
                offset, line_bases, line_width, length, short_line = pos + width, 0, 0, 0, 0
            elif name is None:
                if line.strip():
                    raise UserError(f"{path}, line {number}: sequence data before the first '>' header; "
                                    f"expected a FASTA file")
            else:
                bases = len(line.rstrip(b"\r\n"))
                if length == 0 and line_bases == 0:
                    line_bases, line_width = bases, width
                elif bases and (short_line or bases > line_bases
                                or (bases == line_bases and line.endswith(b"\n") and width != line_width)):
                    raise UserError(f"{path}, line {short_line or number}: lines of sequence {name!r} have "
                                    f"different lengths; expected every line {line_bases} bases but the last "
                                    f"(rewrap the FASTA, e.g. with `seqkit seq -w 60`)")
                if bases < line_bases or bases == 0:
                    short_line = short_line or number
                length += bases
            pos += width
    if name is not None:
        entries.append((name, _Entry(length, offset, line_bases, line_width)))
    if not entries:
        raise UserError(f"{path}: no sequences; expected a FASTA file ('>name' lines followed by bases)")
    return entries


def _compression(path: str) -> str:
    """'plain', 'bgzf' (block gzip: random access) or refuses plain gzip with the command that fixes it."""
    with open(path, "rb") as f:
        head = f.read(18)
    if head[:2] != b"\x1f\x8b":
        return "plain"
    # BGZF: a gzip member with the FEXTRA flag and a 'BC' extra subfield (the SAM/BAM specification)
    if len(head) >= 14 and head[3] & 4 and head[12:14] == b"BC":
        return "bgzf"
    plain = path[:-3] if path.endswith(".gz") else path
    raise UserError(f"{path} is gzip-compressed, which allows no random access; recompress it with bgzip "
                    f"(htslib/samtools): `gunzip {path} && bgzip {plain}`")


def _read_fai(fai: str) -> list[tuple[str, _Entry]]:
    entries = []
    with open(fai) as f:
        for number, line in enumerate(f, start=1):
            fields = line.rstrip("\n").split("\t")
            if len(fields) < 5:
                raise UserError(f"{fai}, line {number}: expected 5 tab-separated fields (a samtools .fai); "
                                f"delete the file to have it rebuilt")
            entries.append((fields[0], _Entry(*map(int, fields[1:5]))))
    return entries


class Genome:
    """Random access to a FASTA file. `fetch(chrom, start, end)` -> [end - start] uint8 codes, with
    positions outside the chromosome padded with N (code 4).

    The index PATH.fai is read if present and built (and written, where the folder allows) if not.
    The file is opened lazily and reopened after a fork, so one Genome serves many processes.
    """

    def __init__(self, path: str):
        self.path = str(path)
        if not os.path.isfile(self.path):
            raise UserError(f"{self.path}: no such FASTA file")
        self._file = None
        self._pid = None
        self._bgzf = _compression(self.path) == "bgzf"
        if self._bgzf:
            reader = self._faidx(announce=True)
            self.lengths = dict(zip(reader.references, reader.lengths))
            self._index = self.lengths
            return
        fai = self.path + ".fai"
        if os.path.exists(fai) and os.path.getmtime(fai) >= os.path.getmtime(self.path):
            entries = _read_fai(fai)
        else:
            entries = build_fai(self.path)
            try:
                with open(fai + ".tmp", "w") as f:
                    for name, e in entries:
                        f.write(f"{name}\t{e.length}\t{e.offset}\t{e.line_bases}\t{e.line_width}\n")
                os.replace(fai + ".tmp", fai)
            except OSError:
                pass  # a read-only folder: keep the index in memory
        self._index = dict(entries)
        self.lengths = {name: e.length for name, e in entries}

    def __contains__(self, chrom: str) -> bool:
        return chrom in self._index

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_file"] = state["_pid"] = None
        return state

    def _faidx(self, announce: bool = False):
        """The reader of a bgzipped FASTA, opened once a process (building .fai and .gzi if missing)."""
        if self._file is None or self._pid != os.getpid():
            # pysam (htslib, samtools' own library) rather than more index code of ours: random access
            # into BGZF needs the .gzi block map and virtual offsets, and htslib is the reference that
            # writes and reads samtools' .fai/.gzi. pyfaidx was tried first: its BGZF path fails on reads
            # that start exactly at a block boundary ("within_block_offset 65536").
            try:
                import pysam  # bgzipped FASTAs only
            except ImportError as e:
                raise UserError(f"{self.path} is bgzipped; reading it needs pysam (pip install pysam)") from e
            missing = [p for p in (self.path + ".fai", self.path + ".gzi") if not os.path.exists(p)]
            if missing:
                if announce:
                    print(f"indexing {self.path} (once): writing {' and '.join(missing)}", file=sys.stderr)
                try:
                    pysam.faidx(self.path)
                except pysam.SamtoolsError as e:
                    raise UserError(f"{self.path}: cannot index it ({str(e).strip()}); a bgzipped FASTA needs "
                                    f"lines of equal length (rewrap with `seqkit seq -w 60`, then bgzip) and a "
                                    f"folder where the .fai and .gzi can be written") from e
            try:
                self._file = pysam.FastaFile(self.path)
            except (OSError, ValueError) as e:
                raise UserError(f"{self.path}: cannot open it with its index ({e})") from e
            self._pid = os.getpid()
        return self._file

    def _handle(self):
        if self._file is None or self._pid != os.getpid():
            self._file = open(self.path, "rb")
            self._pid = os.getpid()
        return self._file

    def fetch(self, chrom: str, start: int, end: int) -> np.ndarray:
        """[end - start] uint8 codes of chrom:start-end (0-based, end exclusive), N-padded off the ends."""
        if chrom not in self._index:
            raise UserError(f"{self.path}: no sequence named {chrom!r}")
        if end < start:
            raise ValueError(f"end {end} < start {start}")
        out = np.full(end - start, N, dtype=np.uint8)
        lo, hi = max(start, 0), min(end, self.lengths[chrom])
        if lo < hi and self._bgzf:
            raw = self._faidx().fetch(chrom, lo, hi).encode("ascii")
            if len(raw) != hi - lo:
                raise UserError(f"{self.path}: {chrom}:{lo}-{hi} reads {len(raw)} bases instead of {hi - lo}; "
                                f"its .fai does not describe this file (was it written for another file?)")
            out[lo - start:hi - start] = _CODE[np.frombuffer(raw, dtype=np.uint8)]
        elif lo < hi:
            entry = self._index[chrom]
            first = entry.offset + (lo // entry.line_bases) * entry.line_width + lo % entry.line_bases
            last = entry.offset + ((hi - 1) // entry.line_bases) * entry.line_width + (hi - 1) % entry.line_bases
            f = self._handle()
            f.seek(first)
            raw = f.read(last - first + 1).translate(None, b"\r\n")
            if len(raw) != hi - lo:
                raise UserError(f"{self.path}: {chrom}:{lo}-{hi} reads {len(raw)} bases instead of {hi - lo}; "
                                f"its .fai does not describe this file (was it written for another file?); "
                                f"rebuild it with `samtools faidx {self.path}`")
            out[lo - start:hi - start] = _CODE[np.frombuffer(raw, dtype=np.uint8)]
        return out
