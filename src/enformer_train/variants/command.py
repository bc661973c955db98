"""`enformer-train score-variants`: the change an allele makes to every predicted track.

For a VCF record at POS (1-based), pos0 = POS - 1 and, with L the model's input length:
- the reference window is the FASTA's [pos0 - L/2, pos0 + L/2) (N past a chromosome's ends), so the
  variant's first base sits at index L/2, as in DeepMind's Enformer colab (kipoiseq's
  Interval.resize); `--center basenji` puts it at L/2 - 1, as basenji and baskerville do;
- the alternative window keeps the bases left of pos0, then the ALT allele in place of the REF bases,
  then the FASTA after REF, trimmed or extended on the right to exactly L bases (the project's rule:
  an insertion pushes bases out of the right end, a deletion pulls more genome in; basenji and
  baskerville place indels otherwise).
Scores per variant and track, over the output bins: SAD = sum(alt - ref), SAR = sum(log2(alt + 1) -
log2(ref + 1)). Both are sums of per-window terms, so each window is reduced to two [tracks] vectors
as soon as it is predicted, and the reference window of a position is predicted once for all the
alleles there.

Work is cut into chunks of consecutive variants (never splitting a position); chunk c goes to rank
c mod world size among the chunks not yet done. Each finished chunk is a file in OUT.partial/, so a
stopped run resumes where it was; rank 0 assembles the output when every chunk is there.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from .. import chunks
from ..compiling import for_inference
from ..data.genome import Genome, decode, encode
from ..errors import UserError
from ..files import atomic_write
from ..infer import load, predict_codes, select_tracks, targets_for, tta_views

STATS = ("SAD", "SAR")
REF_MISMATCH = ("error", "skip", "warn", "flip", "flip-skip")
_ALLELE = re.compile(r"^[ACGTNacgtn]+$")


@dataclass(frozen=True)
class Variant:
    """One alternative allele of a VCF record."""

    chrom: str
    pos: int  # VCF POS, 1-based
    id: str
    ref: str
    alt: str
    line: int  # line of the VCF file
    flipped: bool = False  # the FASTA has ALT, not REF: scored the other way round and negated
    ref_written: bool = False  # the FASTA has neither (--ref-mismatch warn): REF written into the reference window

    @property
    def pos0(self) -> int:
        return self.pos - 1


@dataclass
class Skipped:
    symbolic: int = 0  # <DEL>, *, breakends, '.': no sequence to put in a window
    ref_mismatch: int = 0  # skipped (--ref-mismatch skip, flip-skip) or kept with a warning (warn)
    flipped: int = 0  # the FASTA has ALT (--ref-mismatch flip, flip-skip)


def _is_symbolic(allele: str) -> bool:
    return allele in ("*", ".") or allele.startswith("<") or "[" in allele or "]" in allele


def _open_text(path: str):
    try:
        with open(path, "rb") as f:
            magic = f.read(2)
    except FileNotFoundError:
        raise UserError(f"{path}: no such VCF file") from None
    if magic == b"\x1f\x8b":  # gzip or bgzip (many gzip members, read as one stream)
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def read_vcf(path: str) -> tuple[list[Variant], Skipped]:
    """Variants of a VCF (plain or gzip), one per alternative allele, in file order, and the count of
    symbolic alleles skipped. A malformed line is a UserError naming it."""
    variants: list[Variant] = []
    skipped = Skipped()
    with _open_text(path) as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line or line.startswith("#"):
                continue
            fields = line.split("\t")
            where = f"{path}, line {number}"
            if len(fields) < 5:
                raise UserError(f"{where}: {len(fields)} tab-separated field(s); expected at least 5 "
                                f"(CHROM POS ID REF ALT)")
            chrom, pos, vid, ref, alts = fields[:5]
            if not pos.isdigit() or int(pos) < 1:
                raise UserError(f"{where}: POS {pos!r} is not a positive integer (VCF POS is 1-based)")
            if not _ALLELE.match(ref):
                raise UserError(f"{where}: REF {ref!r} is not a sequence of A, C, G, T, N")
            for alt in alts.split(","):
                if _is_symbolic(alt):
                    skipped.symbolic += 1
                    continue
                if not _ALLELE.match(alt):
                    raise UserError(f"{where}: ALT {alt!r} is not a sequence of A, C, G, T, N nor a symbolic allele")
                if alt.upper() == ref.upper():
                    raise UserError(f"{where}: ALT {alt!r} is REF; a variant must change the sequence")
                name = vid if vid not in ("", ".") else f"{chrom}:{pos}:{ref.upper()}:{alt.upper()}"
                variants.append(Variant(chrom, int(pos), name, ref.upper(), alt.upper(), number))
    return variants, skipped


def check_reference(variants: list[Variant], genome: Genome, vcf: str, policy: str = "error",
                    skipped: Skipped | None = None) -> list[Variant]:
    """The variants whose chromosome is in the genome, as they are scored. A chromosome absent from
    the FASTA is an error naming the line. A REF that differs from the FASTA is one too, unless
    `policy` is 'skip' (drop it), 'warn' (keep it with REF written into its reference window, say so
    on stderr), or 'flip' / 'flip-skip': where the FASTA has ALT instead, the record is flipped
    (scored from the FASTA's allele to REF and negated, so a score still means VCF ALT minus VCF REF);
    where it has neither, 'flip' stops and 'flip-skip' drops it."""
    skipped = skipped if skipped is not None else Skipped()
    kept, warned = [], 0
    for v in variants:
        if v.chrom not in genome:
            raise UserError(f"{vcf}, line {v.line}: chromosome {v.chrom!r} is not in {genome.path}; "
                            f"its sequences are {', '.join(list(genome.lengths)[:5])}"
                            f"{', ...' if len(genome.lengths) > 5 else ''}")
        found = genome.fetch(v.chrom, v.pos0, v.pos0 + len(v.ref))
        if np.array_equal(found, encode(v.ref)):
            kept.append(v)
            continue
        if policy in ("flip", "flip-skip") and np.array_equal(
                genome.fetch(v.chrom, v.pos0, v.pos0 + len(v.alt)), encode(v.alt)):
            skipped.flipped += 1
            kept.append(replace(v, flipped=True))
            continue
        if policy in ("error", "flip"):
            also = " nor ALT" if policy == "flip" else ""
            advice = "flip-skip|warn" if policy == "flip" else "skip|warn|flip"
            raise UserError(f"{vcf}, line {v.line}: REF {v.ref}{also} but {genome.path} has {decode(found)} at "
                            f"{v.chrom}:{v.pos} (1-based); check the genome build, or pass --ref-mismatch {advice}")
        skipped.ref_mismatch += 1
        if policy in ("skip", "flip-skip"):
            continue
        if warned < 10:
            print(f"warning: {vcf}, line {v.line}: REF {v.ref} but the FASTA has {decode(found)}; scored with "
                  f"REF written into the reference window", file=sys.stderr)
        warned += 1
        kept.append(replace(v, ref_written=True))
    return kept


# -- windows ------------------------------------------------------------------------------------


CENTERS = {"project": 0, "basenji": 1}  # how far left of index L/2 the variant's first base sits


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
    if variant.ref_written:
        return allele_window(genome, variant.chrom, variant.pos0, len(variant.ref), variant.ref, length, left)
    return allele_window(genome, variant.chrom, variant.pos0, 0, "", length, left)


def alternative_window(genome: Genome, variant: Variant, length: int, left: int) -> np.ndarray:
    """[length] codes of the allele a score measures: ALT in place of REF, or for a flipped variant
    REF in place of the FASTA's ALT."""
    if variant.flipped:
        return allele_window(genome, variant.chrom, variant.pos0, len(variant.alt), variant.ref, length, left)
    return allele_window(genome, variant.chrom, variant.pos0, len(variant.ref), variant.alt, length, left)


def chunk_bounds(variants: list[Variant], size: int) -> list[tuple[int, int]]:
    """[start, end) of consecutive chunks of about `size` variants, cut only where the position
    changes, so the alleles of a position share one reference prediction."""
    bounds, start = [], 0
    for i in range(1, len(variants) + 1):
        if i == len(variants) or (i - start >= size and (variants[i].chrom, variants[i].pos)
                                  != (variants[i - 1].chrom, variants[i - 1].pos)):
            bounds.append((start, i))
            start = i
    return bounds


# -- scoring ------------------------------------------------------------------------------------


@dataclass
class Scorer:
    """What scoring a window needs: the model and head, the tracks kept, the strand views."""

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
    windows: int = 0  # windows predicted so far (a reference window shared by alleles counts once)

    def _sums(self, codes: list[np.ndarray]) -> dict[str, torch.Tensor]:
        """Per window, over the output bins: {'sum': sum(pred), 'log': sum(log2(pred + 1))}, [n, tracks] float64."""
        views = tta_views(self.tta, max_shift=0)  # strands only: a shift would move the variant
        tracks = torch.as_tensor(self.tracks)
        out: dict[str, list[torch.Tensor]] = {"sum": [], "log": []}
        for i in range(0, len(codes), self.batch_size):
            pred = predict_codes(self.model, np.stack(codes[i:i + self.batch_size]), self.head, views,
                                 self.strand_pair, self.autocast)
            pred = pred[..., tracks.to(pred.device)].double()
            out["sum"].append(pred.sum(1).cpu())
            if "SAR" in self.stats:
                out["log"].append(torch.log2(pred + 1).sum(1).cpu())
            self.windows += pred.shape[0]
        return {k: torch.cat(v) for k, v in out.items() if v}

    def score(self, variants: list[Variant]) -> dict[str, np.ndarray]:
        """{stat: [variants, tracks] float32} for `variants`; one reference window per position."""
        length = self.model.config.sequence_length
        # the FASTA's window of a position, shared by its alleles; a window of its own with REF written in
        # for a variant whose REF the FASTA does not have (--ref-mismatch warn)
        keys = [i if v.ref_written else (v.chrom, v.pos0) for i, v in enumerate(variants)]
        owners: dict = {}
        for key, v in zip(keys, variants):
            owners.setdefault(key, v)
        index = {key: i for i, key in enumerate(owners)}
        ref_index = torch.as_tensor([index[key] for key in keys])
        left = length // 2 - CENTERS[self.center]
        windows = [reference_window(self.genome, v, length, left) for v in owners.values()]
        windows += [alternative_window(self.genome, v, length, left) for v in variants]
        sums = self._sums(windows)
        n = len(owners)
        sign = torch.as_tensor([-1.0 if v.flipped else 1.0 for v in variants], dtype=torch.float64)[:, None]
        out = {}
        if "SAD" in self.stats:
            out["SAD"] = (sign * (sums["sum"][n:] - sums["sum"][:n][ref_index])).float().numpy()
        if "SAR" in self.stats:
            out["SAR"] = (sign * (sums["log"][n:] - sums["log"][:n][ref_index])).float().numpy()
        return out


# -- the command --------------------------------------------------------------------------------


@dataclass
class Plan:
    """Everything that decides the scores; a resumed run must have the same."""

    vcf: dict  # chunks.file_identity: path, size, mtime
    fasta: dict
    fasta_index: str  # SHA-256 of the FASTA's sequence names and lengths
    targets: dict | None  # --targets (strand pairs, names)
    checkpoint: dict  # with the SHA-256 of the model file
    head: str
    tracks: list[int]
    stats: list[str]
    tta: bool
    bf16: bool
    center: str
    ref_mismatch: str
    chunk_size: int
    num_variants: int
    sequence_length: int
    chunks: list[list[int]] = field(default_factory=list)


def write_output(out: str, variants: list[Variant], parts, stats: list[str], target_ids: list[str],
                 target_labels: list[str]) -> None:
    """`out` atomically: HDF5 in Basenji's sad.h5 layout, or a .tsv with a column per stat and track.
    `parts` yields the scores in variant order, a chunk at a time ({stat: [rows, tracks]}); each is
    written as it comes, so memory holds one chunk whatever the number of variants."""
    if out.endswith(".tsv"):
        def write(tmp: str) -> None:
            columns = [f"{s}:{t}" for s in stats for t in target_ids]
            with open(tmp, "w", encoding="utf-8") as f:
                f.write("\t".join(["snp", "chr", "pos", "ref_allele", "alt_allele", "flipped", *columns]) + "\n")
                row = 0
                for part in parts:
                    for i in range(len(part[stats[0]])):
                        v = variants[row + i]
                        values = [f"{x:.6g}" for s in stats for x in part[s][i].astype(np.float32)]
                        f.write("\t".join([v.id, v.chrom, str(v.pos), v.ref, v.alt, str(int(v.flipped)), *values])
                                + "\n")
                    row += len(part[stats[0]])
    else:
        import h5py

        def write(tmp: str) -> None:
            f16 = np.finfo(np.float16)

            def text(values: list[str]) -> np.ndarray:  # fixed-length bytes as Basenji's, UTF-8 for any ID
                return np.array([x.encode("utf-8") for x in values], "S")

            with h5py.File(tmp, "w") as h5:
                h5.create_dataset("snp", data=text([v.id for v in variants]))
                h5.create_dataset("chr", data=text([v.chrom for v in variants]))
                h5.create_dataset("pos", data=np.array([v.pos for v in variants], dtype="uint32"))
                h5.create_dataset("ref_allele", data=np.array([v.ref for v in variants], "S"))
                h5.create_dataset("alt_allele", data=np.array([v.alt for v in variants], "S"))
                h5.create_dataset("flipped", data=np.array([v.flipped for v in variants], bool))
                h5.create_dataset("target_ids", data=text(target_ids))
                h5.create_dataset("target_labels", data=text(target_labels))
                shape = (len(variants), len(target_ids))
                sets = {s: h5.create_dataset(s, shape=shape, dtype=np.float16,
                                             chunks=(max(1, min(len(variants), 256)), max(1, shape[1]))
                                             if len(variants) else None) for s in stats}
                row = 0
                for part in parts:
                    n = len(part[stats[0]])
                    for s in stats:
                        # float16 as Basenji writes it, clipped to its range rather than overflowing to inf
                        sets[s][row:row + n] = np.clip(part[s], f16.min, f16.max).astype(np.float16)
                    row += n

    atomic_write(out, write)


def score_variants(args) -> dict:
    """`enformer-train score-variants` (under torchrun too). Rank 0 writes --out and returns the counts
    (variants, scored by this rank, windows predicted, seconds, skipped); other ranks return None."""
    from ..data.targets import strand_pairs
    from ..train.distributed import barrier, setup, teardown

    out = args.out
    if not out.endswith((".h5", ".hdf5", ".tsv")):
        raise UserError(f"--out {out}: expected .h5 (Basenji's sad.h5 layout) or .tsv")
    if not out.endswith(".tsv"):
        try:
            import h5py  # noqa: F401
        except ImportError:
            raise UserError("HDF5 output needs h5py (pip install 'enformer-train[variants]'); or write .tsv") from None
    if os.path.exists(out) and not args.force:
        raise UserError(f"--out {out} exists; pass --force to replace it")
    folder = os.path.dirname(os.path.abspath(out))
    while not os.path.exists(folder):  # made when the output is: the nearest folder that exists must be writable
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise UserError(f"--out {out}: {folder} is not a folder this process can write; choose another")
    for name, value in (("--batch-size", args.batch_size), ("--chunk-size", args.chunk_size)):
        if value < 1:
            raise UserError(f"{name} {value}: must be at least 1")
    stats = [s.strip().upper() for s in (args.stats or "SAD").split(",") if s.strip()]
    for s in stats:
        if s not in STATS:
            raise UserError(f"--stats {s!r}: expected SAD and/or SAR")
    world = setup(args.device, getattr(args, "collective_timeout_s", 600.0), "score-variants")
    try:
        loaded = load(args.checkpoint, world.device)
        model = loaded.model
        call = for_inference(model) if getattr(args, "compile", False) else model  # refused before any file is written
        head = args.organism or next(iter(model.heads))
        if head not in model.heads:
            raise UserError(f"--organism {head!r}: the model's heads are {', '.join(model.heads)}")
        rows = targets_for(loaded, head, args.targets)
        num_tracks = model.config.heads[head]
        tracks = select_tracks(args.tracks, num_tracks, rows)
        genome = Genome(args.fasta)
        variants, skipped = read_vcf(args.vcf)
        variants = check_reference(variants, genome, args.vcf, args.ref_mismatch, skipped)
        bounds = chunk_bounds(variants, args.chunk_size)
        bf16 = bool(getattr(args, "bf16", False))
        center = getattr(args, "center", "project")
        names = hashlib.sha256(json.dumps(list(genome.lengths.items())).encode()).hexdigest()
        plan = Plan(chunks.file_identity(args.vcf), chunks.file_identity(args.fasta), names,
                    chunks.file_identity(args.targets) if args.targets else None,
                    chunks.file_identity(loaded.path, checksum=True), head, tracks, stats, bool(args.tta), bf16,
                    center, args.ref_mismatch, args.chunk_size, len(variants), model.config.sequence_length,
                    [list(b) for b in bounds])
        partial, todo = chunks.start(out, asdict(plan), [b - a for a, b in bounds], stats, args.force, world,
                                     "VCF, FASTA, --targets, model, tracks, stats, --tta, --bf16, --center, --ref-mismatch, "
                                     "--chunk-size")
        mine = todo[world.rank::world.world_size]
        pair = None
        if args.tta and rows is not None:
            pair = torch.as_tensor(strand_pairs(rows, args.targets or "targets.txt"), device=world.device)
        scorer = Scorer(call, genome, head, tracks, tuple(stats), bool(args.tta), pair, args.batch_size, autocast=bf16,
                        center=center)
        if world.is_main and len(todo) < len(bounds):
            print(f"resuming from {partial}: {len(bounds) - len(todo)} of {len(bounds)} chunks done", file=sys.stderr)
        started = time.time()
        scored = 0
        from ..progress import progress

        # a bar with variants/s and ETA on a terminal, a plain line a minute in a log file
        with progress(sum(bounds[c][1] - bounds[c][0] for c in mine), "scoring", "variant",
                      enabled=world.is_main and not getattr(args, "quiet", False)) as bar:
            for c in mine:
                a, b = bounds[c]
                chunks.write_chunk(chunks.chunk_path(partial, c), scorer.score(variants[a:b]))
                scored += b - a
                bar.update(b - a)
        seconds = time.time() - started
        barrier(f"the barrier after scoring ({len(mine)} chunks on this rank), before rank 0 writes {out}")
        summary = {"variants": len(variants), "scored": scored, "windows": scorer.windows, "seconds": seconds,
                   "symbolic": skipped.symbolic, "ref_mismatch": skipped.ref_mismatch, "flipped": skipped.flipped,
                   "out": out}
        if world.is_main:
            def parts():
                for c, (a, b) in enumerate(bounds):
                    chunk = chunks.read_chunk(chunks.chunk_path(partial, c), b - a, stats)
                    if chunk is None:
                        raise UserError(f"{chunks.chunk_path(partial, c)}: missing or unreadable after every rank "
                                        f"finished; run the command again to score it")
                    yield chunk

            ids = [rows[t]["identifier"] if rows else str(t) for t in tracks]
            labels = [rows[t].get("description", "") if rows else "" for t in tracks]
            write_output(out, variants, parts(), stats, ids, labels)
            shutil.rmtree(partial, ignore_errors=True)
            return summary
        return None
    finally:
        teardown()
