"""Predicting a chunk of variants and turning the predictions into scores.

Each window's prediction [bins, tracks] (strands averaged with --tta) is kept only until every
score of its position is computed: the reference windows of a position (one per shift, shared by
the position's alleles) and each allele's windows. Windows of consecutive positions share batches.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from ..data.formats.genome import Genome
from ..infer import predict_codes, tta_views
from .genes import Annotation, nearest_tss, score_genes
from .stats import PER_BIN, compute_scores
from .vcf import Variant
from .windows import alternative_window, reference_window, variant_index

GENE_STATS = ("SED", "logSED")


@dataclass
class Scorer:
    """What scoring a window needs: the model and head, the tracks kept and how they become columns,
    the strand views and shifts, and the genes when gene-level scores are asked."""

    model: torch.nn.Module
    genome: Genome
    head: str
    tracks: list[int]
    stats: tuple[str, ...] = ("SAD",)
    tta: bool = False
    strand_pair: torch.Tensor | None = None
    batch_size: int = 4
    autocast: bool = False
    center: str = "project"  # the variant's first base at index L/2, or L/2 - 1 ("basenji")
    shifts: tuple[int, ...] = (0,)
    columns: list[list[int]] | None = None  # --sum-strands: positions in `tracks` summed into one column
    annotation: Annotation | None = None  # --genes
    strands: list[str] = field(default_factory=list)  # '+', '-' or '.' per entry of `tracks` (gene scores)
    windows: int = 0  # windows predicted so far (a reference window shared by alleles counts once)

    def __post_init__(self):
        config = self.model.config
        self.length = config.sequence_length
        self.bin_size = config.bin_size
        self.num_bins = config.target_length
        self.crop = (self.length - self.num_bins * self.bin_size) // 2
        self._kept = torch.as_tensor(self.tracks, device=next(self.model.parameters()).device)

    # -- predictions ----------------------------------------------------------------------------

    def _predict(self, windows: list[np.ndarray]) -> torch.Tensor:
        """[n, bins, tracks kept] float64 on the model's device."""
        views = tta_views(self.tta, max_shift=0)  # strands only: a shift of its own would move the variant
        pred = predict_codes(self.model, np.stack(windows), self.head, views, self.strand_pair, self.autocast)
        self.windows += len(windows)
        return pred[..., self._kept].double()

    def _positions(self, variants: list[Variant]) -> list[tuple[Variant, list[Variant]]]:
        """(the variant whose reference windows serve, the variants scored against them) in order:
        the alleles of a position share the FASTA's windows; a variant with REF written in
        (--ref-mismatch warn) has its own."""
        groups: dict = {}
        for i, v in enumerate(variants):
            key = ("own", i) if v.ref_written else (v.chrom, v.pos0)
            groups.setdefault(key, (v, []))[1].append(v)
        return list(groups.values())

    def _predicted(self, groups) -> Iterator[tuple[torch.Tensor, list[torch.Tensor]]]:
        """Per group in order: (reference [shifts, bins, tracks], [alternative [shifts, bins, tracks]
        per variant]), windows of consecutive groups batched together."""
        def jobs():
            for g, (owner, members) in enumerate(groups):
                for s in self.shifts:
                    left = variant_index(self.length, self.center, s)
                    yield g, -1, reference_window(self.genome, owner, self.length, left)
                for k, v in enumerate(members):
                    for s in self.shifts:
                        left = variant_index(self.length, self.center, s)
                        yield g, k, alternative_window(self.genome, v, self.length, left)

        pending: dict[int, list] = {}
        done = 0

        def complete():
            nonlocal done
            while done in pending and len(pending[done]) == (1 + len(groups[done][1])) * len(self.shifts):
                preds = torch.stack(pending.pop(done)).unflatten(0, (-1, len(self.shifts)))
                yield preds[0], list(preds[1:])
                done += 1

        batch: list = []
        for job in jobs():
            batch.append(job)
            if len(batch) == self.batch_size:
                for (g, _, _), pred in zip(batch, self._predict([w for _, _, w in batch])):
                    pending.setdefault(g, []).append(pred)
                batch = []
                yield from complete()
        if batch:
            for (g, _, _), pred in zip(batch, self._predict([w for _, _, w in batch])):
                pending.setdefault(g, []).append(pred)
        yield from complete()

    # -- scores ---------------------------------------------------------------------------------

    def score(self, variants: list[Variant], first: int = 0) -> dict[str, np.ndarray]:
        """The chunk's arrays: {stat: [variants, columns] float32}, REF/ALT [variants, shifts, bins,
        columns] float16, and with genes the rows of the gene table ('genes.variant' the variant's
        index counting from `first`, 'genes.gene_id', ..., 'genes.SED', 'genes.logSED')."""
        rows: dict[str, list] = {s: [] for s in self.stats}
        genes: dict[str, list] = {k: [] for k in ("variant", "gene_id", "gene_name", "strand", "distance",
                                                   *GENE_STATS)}
        columns = self.columns or [[t] for t in range(len(self.tracks))]
        groups = self._positions(variants)
        index = {id(v): i for i, v in enumerate(variants)}
        for (owner, members), (ref, alts) in zip(groups, self._predicted(groups)):
            for v, alt in zip(members, alts):
                # a flipped variant's FASTA window holds ALT: it is the alternative, REF written in the reference
                r, a = (alt, ref) if v.flipped else (ref, alt)
                scores = compute_scores(r, a, self.stats, self.columns)
                for s in self.stats:
                    x = scores[s].cpu().numpy()
                    rows[s].append(np.clip(x, *_F16).astype(np.float16) if s in PER_BIN else x.astype(np.float32))
                if self.annotation is not None:
                    self._genes(v, r, a, columns, index[id(v)] + first, genes)
        out = {s: np.stack(rows[s]) for s in self.stats}
        if self.annotation is not None:
            width = len(columns)
            out["genes.variant"] = np.asarray(genes["variant"], np.int64)
            for k in ("gene_id", "gene_name", "strand"):
                out[f"genes.{k}"] = np.asarray(genes[k], dtype=str)
            out["genes.distance"] = np.asarray(genes["distance"], np.int64)
            for k in GENE_STATS:
                out[f"genes.{k}"] = (np.concatenate(genes[k]) if genes[k] else np.zeros((0, width))).astype(np.float32)
        return out

    def _genes(self, v: Variant, ref: torch.Tensor, alt: torch.Tensor, columns, row: int, out: dict) -> None:
        """The rows of the gene table for variant `v`: every gene with a TSS in the unshifted window's output."""
        chrom = v.fasta_chrom or v.chrom
        out_starts = [v.pos0 - variant_index(self.length, self.center, s) + self.crop for s in self.shifts]
        start = v.pos0 - variant_index(self.length, self.center, 0) + self.crop
        found = self.annotation.genes_near(chrom, start, start + self.num_bins * self.bin_size)
        if not found:
            return
        sed, log_sed = score_genes(ref, alt, out_starts, self.bin_size, found, columns, self.strands)
        for gene in found:
            out["variant"].append(row)
            out["gene_id"].append(gene.gene_id)
            out["gene_name"].append(gene.gene_name)
            out["strand"].append(gene.strand)
            out["distance"].append(nearest_tss(gene, v.pos0))
        out["SED"].append(sed)
        out["logSED"].append(log_sed)


_F16 = (float(np.finfo(np.float16).min), float(np.finfo(np.float16).max))
