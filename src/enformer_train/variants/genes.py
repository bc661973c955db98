"""Genes of a GTF and the change a variant makes at their transcription start sites (`score-variants
--genes`, the eQTL workflow).

A gene's TSSs are those of its transcripts: a '+' transcript starts at its first base, a '-' one at
its last. Transcripts are the GTF's `transcript` rows; a gene without any is given the extents of its
exons, grouped by transcript_id; a gene with neither has its `gene` row as its one transcript.

The statistics keep Borzoi's names (borzoi_sed.py, which sums a gene's exon bins); here the bins are
those of a gene's TSSs and their two neighbours (the signal of a TSS near a bin edge spills into the
next bin): with r and a the reference and alternative predictions summed over those bins,
SED = a - r and logSED = log2(1 + a) - log2(1 + r), averaged over the window shifts.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UserError
from .vcf import open_text

_USED = ("transcript", "exon", "gene")
# key "value"; key value; ... (GTF2.2). Quoted values may hold spaces and semicolons, unquoted ones
# run to the next semicolon; whatever follows a quoted value without one is read as more attributes.
_ATTRIBUTE = re.compile(r'\s*([^\s";]+)\s*(?:"([^"]*)"\s*;?|([^";]*?)\s*(?:;|$))')
_WANTED = ("gene_id", "transcript_id", "gene_name")


@dataclass(frozen=True)
class Gene:
    gene_id: str
    gene_name: str  # the gene_name attribute, else gene_id
    chrom: str  # as the FASTA names it
    strand: str  # '+' or '-'
    tss: tuple[int, ...]  # 0-based TSS positions of its transcripts, sorted, unique


class _Draft:
    """A gene while the file is read: its TSSs so far, or its exons' extents while it has no transcript row."""

    __slots__ = ("chrom", "exons", "gene_id", "name", "row", "strand", "tss")

    def __init__(self, gene_id: str, chrom: str, strand: str):
        self.gene_id, self.chrom, self.strand = gene_id, chrom, strand
        self.name: str | None = None
        self.tss: set[int] = set()
        # transcript_id -> its exons' [first, last] base (1-based); None once the gene has a transcript row
        self.exons: dict[str, list[int]] | None = {}
        self.row: tuple[int, int] | None = None  # the gene row's first and last base (1-based)

    def tss_of(self, first: int, last: int) -> int:
        return first - 1 if self.strand == "+" else last - 1

    def finish(self) -> Gene:
        tss = set(self.tss)
        if not tss and self.exons:
            tss = {self.tss_of(first, last) for first, last in self.exons.values()}
        if not tss and self.row is not None:
            tss = {self.tss_of(*self.row)}
        return Gene(self.gene_id, self.name or self.gene_id, self.chrom, self.strand, tuple(sorted(tss)))


def _attributes(text: str) -> dict[str, str]:
    """gene_id, transcript_id and gene_name of a GTF attribute column, where present."""
    found: dict[str, str] = {}
    for m in _ATTRIBUTE.finditer(text):
        key = m.group(1)
        if key in _WANTED and key not in found:
            found[key] = m.group(2) if m.group(2) is not None else m.group(3)
            if len(found) == len(_WANTED):
                break
    return found


class Annotation:
    """The genes of a GTF (plain or gzip), read in one pass, with their TSSs indexed by chromosome.

    `rename` maps the GTF's chromosome names to the FASTA's (None: not in the FASTA); genes on a
    chromosome it does not know are left out and counted in `skipped_chromosomes` (GTF name -> genes).
    A gene_id on two chromosomes or strands (PAR genes, alt contigs in UCSC's GTFs) is two genes.
    """

    def __init__(self, path: str, rename: Callable[[str], str | None]):
        self.path = path
        drafts: dict[tuple[str, str, str], _Draft] = {}
        skipped: dict[str, set[str]] = {}
        number = 0
        with open_text(path, "GTF") as f:
            try:
                for number, line in enumerate(f, start=1):
                    if line.startswith("#"):
                        continue
                    line = line.rstrip("\r\n")
                    if not line:
                        continue
                    self._read_line(line, number, rename, drafts, skipped)
            except (OSError, EOFError) as e:  # a damaged or truncated gzip file
                raise UserError(f"{path}: reading stopped after line {number}: {e}") from None
        self.skipped_chromosomes: dict[str, int] = {chrom: len(ids) for chrom, ids in skipped.items()}
        if not drafts:
            if skipped:
                raise UserError(f"{path}: none of its chromosomes ({', '.join(list(skipped)[:5])}"
                                f"{', ...' if len(skipped) > 5 else ''}) is in the FASTA; "
                                f"give a GTF for the FASTA's genome")
            raise UserError(f"{path}: no gene, transcript or exon rows; expected a GTF with genes")
        self.genes: list[Gene] = [d.finish() for d in drafts.values()]

        # Per chromosome, every TSS with its gene's index, sorted by position.
        by_chrom: dict[str, tuple[list[int], list[int]]] = {}
        for index, gene in enumerate(self.genes):
            positions, owners = by_chrom.setdefault(gene.chrom, ([], []))
            positions.extend(gene.tss)
            owners.extend([index] * len(gene.tss))
        self._tss: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for chrom, (positions, owners) in by_chrom.items():
            order = np.argsort(positions, kind="stable")
            self._tss[chrom] = (np.asarray(positions, np.int64)[order], np.asarray(owners, np.int64)[order])

    def _read_line(self, line: str, number: int, rename: Callable[[str], str | None],
                   drafts: dict[tuple[str, str, str], _Draft], skipped: dict[str, set[str]]) -> None:
        where = f"{self.path}, line {number}"
        fields = line.split("\t", 8)
        if len(fields) < 9:
            raise UserError(f"{where}: {len(fields)} tab-separated field(s); expected 9 "
                            f"(seqname source feature start end score strand frame attributes)")
        chrom, _, feature, start, end, _, strand, _, attributes = fields
        try:
            first, last = int(start), int(end)
        except ValueError:
            raise UserError(f"{where}: start {start!r} and end {end!r} must be integers (1-based, inclusive)") from None
        if first < 1:
            raise UserError(f"{where}: start {first} is before the first base (GTF positions are 1-based)")
        if first > last:
            raise UserError(f"{where}: start {first} is after end {last}")
        if feature not in _USED:
            return
        if strand not in ("+", "-"):
            raise UserError(f"{where}: strand {strand!r} of a {feature} row; expected '+' or '-'")
        attrs = _attributes(attributes)
        gene_id = attrs.get("gene_id")
        if not gene_id:
            hint = " (is it GFF3? --genes reads GTF)" if "=" in attributes else ""
            raise UserError(f'{where}: no gene_id attribute; expected attributes as key "value"; ...{hint}')
        key = (gene_id, chrom, strand)
        draft = drafts.get(key)
        if draft is None:
            fasta_chrom = rename(chrom)
            if fasta_chrom is None:
                skipped.setdefault(chrom, set()).add(gene_id)
                return
            draft = drafts[key] = _Draft(gene_id, fasta_chrom, strand)
        if draft.name is None:
            draft.name = attrs.get("gene_name") or None
        if feature == "transcript":
            draft.tss.add(draft.tss_of(first, last))
            draft.exons = None
        elif feature == "exon":
            if draft.exons is not None:
                extent = draft.exons.setdefault(attrs.get("transcript_id", ""), [first, last])
                extent[0], extent[1] = min(extent[0], first), max(extent[1], last)
        else:
            draft.row = (first, last)

    def genes_near(self, chrom: str, start: int, end: int) -> list[Gene]:
        """Genes with at least one TSS in [start, end) (0-based), in order of gene_id's first appearance in the file."""
        if chrom not in self._tss:
            return []
        positions, owners = self._tss[chrom]
        lo, hi = np.searchsorted(positions, [start, end], side="left")
        return [self.genes[i] for i in np.unique(owners[lo:hi])]


def gene_bins(gene: Gene, out_start: int, bin_size: int, num_bins: int) -> np.ndarray:
    """Sorted unique bin indices: for each TSS of the gene inside [out_start, out_start + num_bins *
    bin_size), its bin and its two neighbours, clipped to [0, num_bins); each bin once. [n] int64."""
    tss = np.asarray(gene.tss, np.int64)
    tss = tss[(tss >= out_start) & (tss < out_start + num_bins * bin_size)]
    bins = ((tss - out_start) // bin_size)[:, None] + np.array([-1, 0, 1])
    bins = np.unique(bins)
    return bins[(bins >= 0) & (bins < num_bins)]


def score_genes(ref: torch.Tensor, alt: torch.Tensor, out_starts: Sequence[int], bin_size: int,
                genes: list[Gene], columns: list[list[int]], strands: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """SED and logSED of one variant, each [len(genes), len(columns)] float64.

    ref, alt: [shifts, bins, tracks] predictions; out_starts[s]: the genome position of shift s's first
    output bin. Per shift and gene, r and a are the predictions summed over the gene's bins (gene_bins)
    and over the column's tracks whose strand (strands[t]: '+', '-' or '.') is '.' or the gene's;
    SED = a - r and logSED = log2(1 + a) - log2(1 + r) are averaged over the shifts (a shift without a
    TSS in its output gives 0). NaN where a column has no track for the gene's strand.
    """
    shifts, num_bins, num_tracks = ref.shape
    if alt.shape != ref.shape or len(out_starts) != shifts or len(strands) != num_tracks:
        raise ValueError(f"ref {tuple(ref.shape)}, alt {tuple(alt.shape)}, {len(out_starts)} out_starts and "
                         f"{len(strands)} strands do not agree")
    sed = np.full((len(genes), len(columns)), np.nan)
    log_sed = sed.copy()
    if not genes or not columns:
        return sed, log_sed

    # Only the gene bins leave the device: the rows of (gene, shift, bin), summed into [genes * shifts, tracks].
    slot, shift, bins = [], [], []
    for g, gene in enumerate(genes):
        for s, out_start in enumerate(out_starts):
            b = gene_bins(gene, int(out_start), bin_size, num_bins)
            slot.extend([g * shifts + s] * len(b))
            shift.extend([s] * len(b))
            bins.extend(b.tolist())
    index = (torch.as_tensor(shift, dtype=torch.long, device=ref.device),
             torch.as_tensor(bins, dtype=torch.long, device=ref.device))
    slot_t = torch.as_tensor(slot, dtype=torch.long)
    r = torch.zeros(len(genes) * shifts, num_tracks, dtype=torch.float64)
    a = torch.zeros_like(r)
    r.index_add_(0, slot_t, ref[index].to("cpu", torch.float64))
    a.index_add_(0, slot_t, alt[index].to("cpu", torch.float64))
    r = r.numpy().reshape(len(genes), shifts, num_tracks)
    a = a.numpy().reshape(len(genes), shifts, num_tracks)

    # Columns as [columns, width] track indices; a member counts for a gene where its strand allows.
    width = max(len(c) for c in columns)
    members = np.zeros((len(columns), width), np.int64)
    present = np.zeros((len(columns), width), bool)
    for c, tracks in enumerate(columns):
        members[c, :len(tracks)] = tracks
        present[c, :len(tracks)] = True
    track_strand = np.asarray(strands)[members]
    for strand in ("+", "-"):
        rows = [g for g, gene in enumerate(genes) if gene.strand == strand]
        if not rows:
            continue
        eligible = present & ((track_strand == ".") | (track_strand == strand))  # [columns, width]
        r_col = (r[rows][:, :, members] * eligible).sum(-1)  # [genes, shifts, columns]
        a_col = (a[rows][:, :, members] * eligible).sum(-1)
        none = ~eligible.any(-1)
        sed_rows = (a_col - r_col).mean(1)
        log_rows = (np.log2(1 + a_col) - np.log2(1 + r_col)).mean(1)
        sed_rows[:, none] = np.nan
        log_rows[:, none] = np.nan
        sed[rows] = sed_rows
        log_sed[rows] = log_rows
    return sed, log_sed


def nearest_tss(gene: Gene, pos0: int) -> int:
    """Signed distance TSS - pos0 (bases) from a variant at 0-based pos0 to the gene's nearest TSS;
    of two equally near, the one at the smaller position."""
    distances = np.asarray(gene.tss, np.int64) - pos0
    return int(distances[np.argmin(np.abs(distances))])  # tss is sorted: argmin takes the smaller position
