"""`enformer-train score-variants` (under torchrun too): a plan, a chunk loop and a streaming writer.

Work is cut into chunks of consecutive variants (never splitting a position); chunk c goes to rank
c mod world size among the chunks not yet done. Each finished chunk is a file in OUT.partial/, so a
stopped run resumes where it was; rank 0 then writes the output from a fresh pass over the VCF and
the chunk files, a chunk at a time. The VCF is never held whole: each pass streams it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .. import chunks
from ..compiling import for_inference
from ..data.formats.genome import Genome
from ..data.formats.targets import strand_pairs
from ..distributed import barrier, setup, teardown
from ..errors import UserError
from ..infer import choose_head, select_tracks, targets_for
from ..progress import progress
from ..saved import load
from .genes import Annotation
from .names import NameMap
from .output import Layout, genes_path, write_output
from .score import GENE_STATS, Scorer
from .stats import PER_BIN, STATS
from .vcf import REF_MISMATCH, Counts, Vcf
from .windows import CENTERS


@dataclass
class ScoreOptions:
    """The command's parameters (cli.py turns its flags into these)."""

    checkpoint: str
    fasta: str
    vcf: str
    out: str
    organism: str | None = None
    tracks: str | None = None  # indices and/or description substrings
    targets: str | None = None  # targets.txt: names and strand pairs
    stats: str = "SAD"  # comma-separated, of STATS
    tta: bool = False
    shifts: str = "0"  # comma-separated window shifts, averaged over
    sum_strands: bool = False
    genes: str | None = None  # GTF (plain or gzip)
    percentiles: bool = False
    ref_mismatch: str = "error"
    center: str = "project"
    batch_size: int = 4
    chunk_size: int = 256
    compile: bool = False
    force: bool = False
    bf16: bool = False
    quiet: bool = False
    device: str = "auto"
    collective_timeout_s: float = 600.0


@dataclass
class Plan:
    """Everything that decides the numbers in OUT.partial/; a resumed run must have the same."""

    vcf: dict  # chunks.file_identity: path, size, mtime
    fasta: dict
    fasta_index: str  # SHA-256 of the FASTA's sequence names and lengths
    targets: dict | None  # --targets (strand pairs, names)
    genes: dict | None  # --genes
    checkpoint: dict  # with the SHA-256 of the model file
    head: str
    tracks: list[int]
    stats: list[str]
    tta: bool
    shifts: list[int]
    sum_strands: bool
    bf16: bool
    center: str
    ref_mismatch: str
    chunk_size: int
    num_variants: int
    sequence_length: int
    chunks: list[int] = field(default_factory=list)  # variants in each chunk


def parse_stats(text: str) -> list[str]:
    """--stats: names of STATS (any case), in the order given, without repeats."""
    by_lower = {s.lower(): s for s in STATS}
    chosen = []
    for item in (x.strip() for x in text.split(",") if x.strip()):
        if item.lower() not in by_lower:
            raise UserError(f"--stats {item!r}: expected some of {', '.join(STATS)}")
        chosen.append(by_lower[item.lower()])
    if not chosen:
        raise UserError("--stats: name at least one statistic")
    return list(dict.fromkeys(chosen))


def parse_shifts(text: str) -> list[int]:
    """--shifts: e.g. '-1,0,1', without repeats."""
    try:
        shifts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--shifts {text!r}: expected integers, comma-separated (e.g. -1,0,1)") from None
    if not shifts:
        raise UserError("--shifts: give at least one shift (0 is the unshifted window)")
    return list(dict.fromkeys(shifts))


def track_strands(rows: list[dict] | None, tracks: list[int], pairs: np.ndarray | None, path: str) -> list[str]:
    """'+', '-' or '.' for each of `tracks`: '.' for a track paired with itself (or without targets),
    else the last character of its identifier, which must then be + or -."""
    if rows is None or pairs is None:
        return ["."] * len(tracks)
    strands = []
    for t in tracks:
        identifier = rows[t]["identifier"]
        if pairs[t] == t:
            strands.append(".")
        elif identifier[-1:] in ("+", "-"):
            strands.append(identifier[-1])
        else:
            raise UserError(f"{path}, line {rows[t]['line']}: track {identifier!r} has a strand partner but its "
                            f"identifier does not end in + or -, which says its strand")
    return strands


def strand_columns(tracks: list[int], pairs: np.ndarray, rows: list[dict], path: str) -> list[list[int]]:
    """--sum-strands: positions in `tracks` that become one column each, a stranded track with its
    partner (in the order of the first), an unstranded one alone. A partner left out of --tracks
    is an error naming both."""
    where = {t: i for i, t in enumerate(tracks)}
    columns, used = [], set()
    for i, t in enumerate(tracks):
        if i in used:
            continue
        partner = int(pairs[t])
        if partner == t:
            columns.append([i])
            continue
        if partner not in where:
            raise UserError(f"--sum-strands: track {t} ({rows[t]['identifier']}) has its strand partner {partner} "
                            f"({rows[partner]['identifier']}, {path}) outside --tracks; add it")
        columns.append([i, where[partner]])
        used.update((i, where[partner]))
    return columns


def _check_output(o: ScoreOptions, stats: list[str]) -> None:
    """Everything about --out that can be refused before any work."""
    out = o.out
    if not out.endswith((".h5", ".hdf5", ".tsv")):
        raise UserError(f"--out {out}: expected .h5 (Basenji's sad.h5 layout) or .tsv")
    if out.endswith(".tsv"):
        if o.percentiles:
            raise UserError("--percentiles: written into an .h5 output only (datasets {stat}_pct); choose --out X.h5")
        per_bin = [s for s in stats if s in PER_BIN]
        if per_bin:
            raise UserError(f"--stats {','.join(per_bin)}: per-bin predictions go into an .h5 output only; "
                            f"choose --out X.h5")
    else:
        try:
            import h5py  # noqa: F401
        except ImportError:
            raise UserError("HDF5 output needs h5py (pip install 'enformer-train[variants]'); or write .tsv") from None
    written = [out] + ([genes_path(out)] if o.genes and out.endswith(".tsv") else [])
    for path in written:
        if os.path.exists(path) and not o.force:
            raise UserError(f"--out {out}: {path} exists; pass --force to replace it")
    folder = os.path.dirname(os.path.abspath(out))
    while not os.path.exists(folder):  # made when the output is: the nearest folder that exists must be writable
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise UserError(f"--out {out}: {folder} is not a folder this process can write; choose another")
    for name, value in (("--batch-size", o.batch_size), ("--chunk-size", o.chunk_size)):
        if value < 1:
            raise UserError(f"{name} {value}: must be at least 1")
    if o.ref_mismatch not in REF_MISMATCH:
        raise UserError(f"--ref-mismatch {o.ref_mismatch!r}: expected one of {', '.join(REF_MISMATCH)}")
    if o.center not in CENTERS:
        raise UserError(f"--center {o.center!r}: expected one of {', '.join(CENTERS)}")


@dataclass
class Run:
    """A planned run: what scoring and writing need, made once on every rank."""

    options: ScoreOptions
    plan: Plan
    vcf: Vcf
    counts: Counts  # of the first pass
    scorer: Scorer
    target_ids: list[str]
    target_labels: list[str]


def plan_run(o: ScoreOptions, world) -> Run:
    """Loads the model and the inputs, checks every record of the VCF in a first streaming pass and
    cuts it into chunks; refuses (one line) what would fail later, before any output exists."""
    stats = parse_stats(o.stats)
    shifts = parse_shifts(o.shifts)
    _check_output(o, stats)
    loaded = load(o.checkpoint, world.device)
    model = loaded.model
    call = for_inference(model) if o.compile else model  # refused before any file is written
    head = choose_head(model, o.organism)
    rows = targets_for(loaded, head, o.targets)
    targets_name = o.targets or "targets.txt"
    tracks = select_tracks(o.tracks, model.config.heads[head], rows)
    pairs = strand_pairs(rows, targets_name) if rows is not None else None
    columns = None
    if o.sum_strands:
        if pairs is None:
            raise UserError("--sum-strands: needs targets.txt with strand pairs; give --targets FILE")
        columns = strand_columns(tracks, pairs, rows, targets_name)
    genome = Genome(o.fasta)
    annotation = None
    if o.genes:

        annotation = Annotation(o.genes, NameMap(genome.lengths))
    vcf = Vcf(o.vcf, genome, o.ref_mismatch, o.chunk_size)
    sizes = [len(c) for c in vcf.chunks()]  # the first pass: checks every record, counts, cuts chunks
    config = model.config
    width = len(columns) if columns else len(tracks)
    if not o.tracks and any(s in PER_BIN for s in stats):  # refused with the size they would take
        size = vcf.counts.variants * len(shifts) * config.target_length * width * 2
        raise UserError(f"--stats REF/ALT store every bin's prediction ([variants, shifts, bins, tracks] "
                        f"float16): {size / 2**30:,.1f} GiB for {vcf.counts.variants} variants x {len(shifts)} "
                        f"shift(s) x {config.target_length} bins x {width} tracks; choose tracks with --tracks")
    names = hashlib.sha256(json.dumps(list(genome.lengths.items())).encode()).hexdigest()
    plan = Plan(chunks.file_identity(o.vcf), chunks.file_identity(o.fasta), names,
                chunks.file_identity(o.targets) if o.targets else None,
                chunks.file_identity(o.genes) if o.genes else None,
                chunks.file_identity(loaded.path, checksum=True), head, tracks, stats, o.tta, shifts,
                o.sum_strands, o.bf16, o.center, o.ref_mismatch, o.chunk_size, vcf.counts.variants,
                config.sequence_length, sizes)
    pair = torch.as_tensor(pairs, device=world.device) if o.tta and pairs is not None else None
    scorer = Scorer(call, genome, head, tracks, tuple(stats), o.tta, pair, o.batch_size, autocast=o.bf16,
                    center=o.center, shifts=tuple(shifts), columns=columns, annotation=annotation,
                    strands=track_strands(rows, tracks, pairs, targets_name) if annotation else [])
    ids = [rows[t]["identifier"] if rows else str(t) for t in tracks]
    labels = [rows[t].get("description", "") if rows else "" for t in tracks]
    if columns:
        ids = ["/".join(ids[i] for i in col) for col in columns]
        labels = [labels[col[0]] for col in columns]
    return Run(o, plan, vcf, vcf.counts, scorer, ids, labels)


def score_chunks(run: Run, partial: str, mine: set[int], show: bool) -> int:
    """The second pass over the VCF: scores this rank's chunks into OUT.partial/; the variants scored."""
    scored = 0
    # a bar with variants/s and ETA on a terminal, a plain line a minute in a log file
    with progress(sum(run.plan.chunks[c] for c in mine), "scoring", "variant", enabled=show) as bar:
        first = 0
        for c, variants in enumerate(run.vcf.chunks()):
            if c in mine:
                chunks.write_chunk(chunks.chunk_path(partial, c), run.scorer.score(variants, first))
                scored += len(variants)
                bar.update(len(variants))
            first += len(variants)
    return scored


def write_scores(run: Run, partial: str) -> int:
    """The third pass, on rank 0: --out from the VCF's chunks beside their scores, a chunk at a time;
    the rows of the gene table."""
    genes = run.scorer.annotation is not None
    stats = run.plan.stats
    gene_keys = [f"genes.{k}" for k in ("variant", "gene_id", "gene_name", "strand", "distance", *GENE_STATS)]
    pairs = [0]

    def parts():
        for c, variants in enumerate(run.vcf.chunks()):
            path = chunks.chunk_path(partial, c)
            part = chunks.read_chunk(path, len(variants), stats, gene_keys if genes else ())
            if part is None:
                raise UserError(f"{path}: missing or unreadable after every rank finished; run the command "
                                f"again to score it")
            if genes:
                pairs[0] += len(part["genes.variant"])
            yield variants, part

    counts = run.counts
    layout = Layout(stats, run.target_ids, run.target_labels, counts.variants, counts.widths,
                    len(run.plan.shifts), run.scorer.num_bins, genes=genes, percentiles=run.options.percentiles)
    write_output(run.options.out, layout, parts())
    return pairs[0]


def score_variants(o: ScoreOptions) -> dict | None:
    """`enformer-train score-variants`, under torchrun too. Rank 0 writes --out and returns the counts
    (variants, scored by this rank, windows predicted, seconds, skipped, flipped, renamed chromosomes,
    variant-gene pairs); other ranks return None."""
    _check_output(o, parse_stats(o.stats))  # before the process group: no rank waits on another's refusal
    parse_shifts(o.shifts)
    world = setup(o.device, o.collective_timeout_s, "score-variants")
    try:
        run = plan_run(o, world)
        counts = run.counts
        partial, todo = chunks.start(o.out, asdict(run.plan), run.plan.chunks, run.plan.stats, o.force, world,
                                     "VCF, FASTA, --targets, --genes, model, tracks, stats, --tta, --shifts, "
                                     "--sum-strands, --bf16, --center, --ref-mismatch, --chunk-size")
        if world.is_main and len(todo) < len(run.plan.chunks):
            print(f"resuming from {partial}: {len(run.plan.chunks) - len(todo)} of {len(run.plan.chunks)} chunks "
                  f"done", file=sys.stderr)
        started = time.time()
        mine = set(todo[world.rank::world.world_size])
        scored = score_chunks(run, partial, mine, world.is_main and not o.quiet)
        seconds = time.time() - started
        barrier(f"the barrier after scoring ({len(mine)} chunks on this rank), before rank 0 writes {o.out}")
        if not world.is_main:
            return None
        gene_rows = write_scores(run, partial)
        shutil.rmtree(partial, ignore_errors=True)
        return {"variants": counts.variants, "scored": scored, "windows": run.scorer.windows, "seconds": seconds,
                "symbolic": counts.symbolic, "ref_mismatch": counts.ref_mismatch, "flipped": counts.flipped,
                "renamed": counts.renamed, "genes": gene_rows, "out": o.out}
    finally:
        teardown()
