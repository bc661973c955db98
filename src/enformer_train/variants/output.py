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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from ..files import atomic_write
from .score import GENE_STATS
from .stats import PER_BIN, PERCENTILES, percentile_table
from .vcf import Variant

_F16 = np.finfo(np.float16)


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


def _text(values: list[str], width: int) -> np.ndarray:
    """Fixed-length bytes as Basenji writes them, UTF-8 for any ID."""
    return np.array([x.encode("utf-8") for x in values], dtype=f"S{max(1, width)}")


def _write_h5(tmp: str, layout: Layout, parts) -> None:
    import h5py

    n, width = layout.num_variants, len(layout.target_ids)
    rows = max(1, min(n, 256))
    with h5py.File(tmp, "w") as h5:
        w = layout.widths
        meta = {"snp": (f"S{w['id']}",), "chr": (f"S{w['chrom']}",), "pos": ("uint32",),
                "ref_allele": (f"S{w['ref']}",), "alt_allele": (f"S{w['alt']}",), "flipped": (bool,)}
        sets = {k: h5.create_dataset(k, shape=(n,), dtype=dtype) for k, (dtype,) in meta.items()}
        h5.create_dataset("target_ids", data=_text(layout.target_ids, max(map(len, layout.target_ids), default=1) * 4))
        h5.create_dataset("target_labels", data=_text(layout.target_labels,
                                                      max(map(len, layout.target_labels), default=1) * 4))
        for s in layout.stats:
            if s in PER_BIN:
                shape = (n, layout.shifts, layout.bins, width)
                sets[s] = h5.create_dataset(s, shape=shape, dtype=np.float16,
                                            chunks=(1, *shape[1:]) if n else None)
            else:
                sets[s] = h5.create_dataset(s, shape=(n, width), dtype=np.float16,
                                            chunks=(rows, max(1, width)) if n else None)
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
            group.create_dataset("target_ids", data=_text(layout.target_ids,
                                                          max(map(len, layout.target_ids), default=1) * 4))
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
                sets[s][row:end] = _f16(part[s])
            if layout.genes:
                count = len(part["genes.variant"])
                at = genes["variant"].shape[0]
                for k, data in genes.items():
                    data.resize(at + count, axis=0)
                    values = part[f"genes.{k}"]
                    data[at:at + count] = _f16(values) if k in GENE_STATS else values
            row = end
        if layout.percentiles:
            h5.create_dataset("percentiles", data=PERCENTILES)
            for s in layout.stats:
                if s not in PER_BIN:
                    table = percentile_table(lambda a, b, s=s: sets[s][:, a:b].astype(np.float64), n, width)
                    h5.create_dataset(f"{s}_pct", data=_f16(table))


def parts_from_chunks(chunks_of_variants: Iterator[list[Variant]], read) -> Iterator[tuple[list[Variant], dict]]:
    """Pairs each chunk of a fresh pass over the VCF with its arrays (read(c, variants))."""
    for c, variants in enumerate(chunks_of_variants):
        yield variants, read(c, variants)
