"""Writing score-variants' output a chunk at a time, in variant order: memory holds one chunk,
whatever the number of variants.

.h5: Basenji's sad.h5 layout (snp, chr, pos, ref_allele, alt_allele, target_ids, target_labels and
a [variants, columns] float16 dataset per statistic), with `flipped`, REF/ALT as [variants, shifts,
bins, columns], baskerville's `percentiles` and `{stat}_pct` with --percentiles, and with --genes a
group `genes` (variant, gene_id, gene_name, strand, distance, SED, logSED).
.tsv: a row per variant, a column per statistic and track; with --genes a second file OUT.genes.tsv.
Every file is written under a temporary name and renamed into place when whole.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ..files import atomic_write
from .score import GENE_STATS
from .stats import PER_BIN, PERCENTILES, percentile_table
from .vcf import Variant

_F16 = np.finfo(np.float16)
ROWS, COLUMNS = 1024, 64  # an h5 chunk of a statistic: 128 KiB of float16


@dataclass
class Layout:
    """What the output holds besides the rows."""

    stats: list[str]
    target_ids: list[str]
    target_labels: list[str]
    num_variants: int
    widths: dict  # longest UTF-8 id, chrom, ref, alt (fixed-length strings in the .h5)
    shifts: int = 1
    bins: int = 0
    genes: bool = False
    percentiles: bool = False


def genes_path(out: str) -> str:
    """Where the .tsv output's gene table goes."""
    return out[:-len(".tsv")] + ".genes.tsv"


def _f16(x: np.ndarray) -> np.ndarray:
    # float16 as Basenji writes it, clipped to its range rather than overflowing to inf
    return np.clip(x, _F16.min, _F16.max).astype(np.float16)


def write_output(out: str, layout: Layout, parts: Iterable[tuple[list[Variant], dict[str, np.ndarray]]]) -> None:
    """`out` (and its gene table) from `parts`: (the chunk's variants, its arrays) in variant order."""
    if out.endswith(".tsv"):
        _write_tsv(out, layout, parts)
    else:
        atomic_write(out, lambda tmp: _write_h5(tmp, layout, parts))


def _write_tsv(out: str, layout: Layout, parts) -> None:
    stats = [s for s in layout.stats if s not in PER_BIN]
    columns = [f"{s}:{t}" for s in stats for t in layout.target_ids]

    def write(tmp: str, genes_tmp: str | None) -> None:
        with open(tmp, "w", encoding="utf-8") as f, \
                (open(genes_tmp, "w", encoding="utf-8") if genes_tmp else open(os.devnull, "w")) as g:
            f.write("\t".join(["snp", "chr", "pos", "ref_allele", "alt_allele", "flipped", *columns]) + "\n")
            g.write("\t".join(["variant", "snp", "gene_id", "gene_name", "strand", "distance",
                               *[f"{s}:{t}" for s in GENE_STATS for t in layout.target_ids]]) + "\n")
            row = 0
            for variants, part in parts:
                for i, v in enumerate(variants):
                    values = [f"{x:.6g}" for s in stats for x in part[s][i]]
                    f.write("\t".join([v.id, v.chrom, str(v.pos), v.ref, v.alt, str(int(v.flipped)), *values]) + "\n")
                if genes_tmp:
                    for k, index in enumerate(part["genes.variant"]):
                        values = [f"{x:.6g}" for s in GENE_STATS for x in part[f"genes.{s}"][k]]
                        g.write("\t".join([str(index), variants[index - row].id, part["genes.gene_id"][k],
                                           part["genes.gene_name"][k], part["genes.strand"][k],
                                           str(part["genes.distance"][k]), *values]) + "\n")
                row += len(variants)

    if not layout.genes:
        atomic_write(out, lambda tmp: write(tmp, None))
        return
    # the gene table beside the main file's temporary one, renamed into place right after it
    side: list[str] = []

    def write_both(tmp: str) -> None:
        side.append(tmp + ".genes")
        write(tmp, side[0])

    try:
        atomic_write(out, write_both)
        os.replace(side[0], genes_path(out))
    finally:
        if side and os.path.exists(side[0]):
            os.unlink(side[0])


def _text(values: list[str], width: int | None = None) -> np.ndarray:
    """Fixed-length bytes as Basenji writes them (`width` bytes, else the longest), UTF-8 for any ID."""
    encoded = [x.encode("utf-8") for x in values]
    return np.array(encoded, dtype=f"S{max(1, width or max(map(len, encoded), default=1))}")


def _write_h5(tmp: str, layout: Layout, parts) -> None:
    import h5py  # optional: the variants extra

    n, width = layout.num_variants, len(layout.target_ids)
    # a statistic's h5 chunks are ROWS x COLUMNS: whole chunks are written (rows gathered until a band
    # of ROWS is full) and --percentiles reads a band of COLUMNS once
    rows, columns = max(1, min(n, ROWS)), max(1, min(width, COLUMNS))
    with h5py.File(tmp, "w") as h5:
        w = layout.widths
        meta = {"snp": (f"S{w['id']}",), "chr": (f"S{w['chrom']}",), "pos": ("uint32",),
                "ref_allele": (f"S{w['ref']}",), "alt_allele": (f"S{w['alt']}",), "flipped": (bool,)}
        sets = {k: h5.create_dataset(k, shape=(n,), dtype=dtype) for k, (dtype,) in meta.items()}
        h5.create_dataset("target_ids", data=_text(layout.target_ids))
        h5.create_dataset("target_labels", data=_text(layout.target_labels))
        for s in layout.stats:
            if s in PER_BIN:
                shape = (n, layout.shifts, layout.bins, width)
                sets[s] = h5.create_dataset(s, shape=shape, dtype=np.float16,
                                            chunks=(1, *shape[1:]) if n else None)
            else:
                sets[s] = h5.create_dataset(s, shape=(n, width), dtype=np.float16,
                                            chunks=(rows, columns) if n and width else None)
        if layout.genes:
            group = h5.create_group("genes")
            text = h5py.string_dtype("utf-8")
            genes = {"variant": group.create_dataset("variant", shape=(0,), maxshape=(None,), dtype="uint32"),
                     "distance": group.create_dataset("distance", shape=(0,), maxshape=(None,), dtype="int32")}
            for k in ("gene_id", "gene_name", "strand"):
                genes[k] = group.create_dataset(k, shape=(0,), maxshape=(None,), dtype=text)
            for k in GENE_STATS:
                genes[k] = group.create_dataset(k, shape=(0, width), maxshape=(None, width), dtype=np.float16,
                                                chunks=(256, max(1, width)))
            group.create_dataset("target_ids", data=_text(layout.target_ids))
        bands = {s: _Band(sets[s], rows) for s in layout.stats if s not in PER_BIN}
        row = 0
        for variants, part in parts:
            end = row + len(variants)
            sets["snp"][row:end] = _text([v.id for v in variants], w["id"])
            sets["chr"][row:end] = _text([v.chrom for v in variants], w["chrom"])
            sets["pos"][row:end] = [v.pos for v in variants]
            sets["ref_allele"][row:end] = _text([v.ref for v in variants], w["ref"])
            sets["alt_allele"][row:end] = _text([v.alt for v in variants], w["alt"])
            sets["flipped"][row:end] = [v.flipped for v in variants]
            for s in layout.stats:
                if s in PER_BIN:
                    sets[s][row:end] = _f16(part[s])
                else:
                    bands[s].add(_f16(part[s]))
            if layout.genes:
                count = len(part["genes.variant"])
                at = genes["variant"].shape[0]
                for k, data in genes.items():
                    data.resize(at + count, axis=0)
                    values = part[f"genes.{k}"]
                    data[at:at + count] = _f16(values) if k in GENE_STATS else values
            row = end
        for band in bands.values():
            band.flush()
        if layout.percentiles:
            h5.create_dataset("percentiles", data=PERCENTILES)
            for s in bands:
                table = np.empty((width, len(PERCENTILES)))
                for a in range(0, width, columns):  # a band of chunks' columns read once, whole
                    slab = sets[s][:, a:a + columns]
                    table[a:a + slab.shape[1]] = percentile_table(lambda i, j: slab[:, i:j], n, slab.shape[1])
                h5.create_dataset(f"{s}_pct", data=_f16(table))


class _Band:
    """Rows of a [variants, columns] dataset gathered in a [rows, columns] buffer, written a band of
    whole chunks at a time."""

    def __init__(self, dataset, rows: int):
        self.dataset = dataset
        self.buffer = np.empty((rows, dataset.shape[1]), dataset.dtype)
        self.count = 0  # rows in the buffer
        self.written = 0

    def add(self, values: np.ndarray) -> None:
        while len(values):
            take = min(len(values), len(self.buffer) - self.count)
            self.buffer[self.count:self.count + take] = values[:take]
            self.count += take
            values = values[take:]
            if self.count == len(self.buffer):
                self.flush()

    def flush(self) -> None:
        if self.count:
            self.dataset[self.written:self.written + self.count] = self.buffer[:self.count]
            self.written += self.count
            self.count = 0
