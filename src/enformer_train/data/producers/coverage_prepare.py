"""`enformer-train prepare --targets`: bigWig coverage + FASTA + regions BED -> a training store.

The store is the one `prepare --basenji` writes (StoreWriter): per region, the window of
sequence_length + 2 * max_shift bases (`--context`) centred on it, from the FASTA (N past a
chromosome end), and [target_length, tracks] float16 targets over the target span of target_length x 128 bp centred on
it, computed from each track's bigWig as Basenji computes its targets (coverage.py: baseline,
blacklist, NaN, pooling by sum_stat, clip_soft / clip / scale, float16). baskerville's dataset-wide
clip_pct pass is not applied.

Every input is checked before anything is written: targets.txt, the regions (equal lengths,
train/valid/test, target spans inside chromosomes), each bigWig (exists, readable, has every
chromosome the regions use). Work is one task per chunk of regions, run by a pool of processes; a
task opens each bigWig once and reads each region's span with one call per track. The state file
lists the chunks done, so a rerun of the same command resumes, and the manifest that makes the store
readable is written last.
"""
from __future__ import annotations

import os

from ... import files
from ...errors import UserError
from ...progress import progress as progress_bar
from ..formats.coverage import POOL_WIDTH, BigWig, check_chromosomes, read_blacklist, read_tracks, region_targets
from ..formats.genome import Genome
from ..formats.intervals import SPLITS, by_split, check_splits
from ..store import StoreWriter, check_targets
from .pool import producer_results, worker_inputs
from .regions import read_regions, target_start

CHUNK = 32  # regions per task: each bigWig is opened once per task


def _file_id(path: str) -> dict:
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _check(targets: str, regions: str, genome: Genome, tracks: list, rows: dict) -> None:
    """Every bigWig exists, reads, and has every chromosome the regions use."""
    used: dict[str, str] = {}
    for split_rows in rows.values():
        for region in split_rows:
            used.setdefault(region.chrom, f"{regions}, line {region.line}")
    for track in tracks:
        with BigWig(track.file, f"{targets}, line {track.line}") as bw:
            check_chromosomes(bw, used, f"{targets}, line {track.line}")


def _describe_chunk(task) -> str:
    return f"{task[0]} regions {task[1]}-{task[2] - 1}"


def prepare_coverage(out: str, organism: str, fasta: str, targets: str, regions: str, *,
                     sequence_length: int = 196_608, target_length: int = 896, max_shift: int = 3,
                     blacklist: str | None = None, transform: str = "basenji", workers: int | None = None,
                     splits: tuple[str, ...] = SPLITS, chunk: int = CHUNK, restart: bool = False,
                     progress: bool = True, nonfinite_targets: str = "refuse") -> dict:
    """Write the store `out` from bigWigs (the regions of `splits` only); returns its manifest. See the
    module docstring."""
    if sequence_length <= 0 or target_length <= 0 or max_shift < 0 or chunk <= 0:
        raise UserError("--context and --target-length must be positive and --max-shift >= 0")
    if target_length * POOL_WIDTH > sequence_length:
        raise UserError(f"--target-length {target_length} x {POOL_WIDTH} bp is longer than --context {sequence_length}")
    check_splits(splits)
    tracks = read_tracks(targets, transform)
    genome = Genome(fasta)
    found = by_split(read_regions(regions, genome, sequence_length, target_length))
    rows = {split: found[split] for split in splits if split in found}
    if not rows:
        raise UserError(f"{regions}: no region of the splits {', '.join(splits)}")
    black = read_blacklist(blacklist)
    _check(targets, regions, genome, tracks, rows)

    sources = {"fasta": _file_id(fasta), "regions": _file_id(regions), "targets": _file_id(targets),
               "blacklist": _file_id(blacklist) if blacklist else None,
               "bigwigs": [_file_id(t.file) for t in tracks]}
    writer = StoreWriter(out, organism, rows, sequence_length=sequence_length, max_shift=max_shift,
                         target_length=target_length, num_targets=len(tracks), sources=sources, restart=restart,
                         inputs={"producer": "bigwig", "target_length": target_length, "pool_width": POOL_WIDTH,
                                 "transform": transform, "chunk": chunk, "sources": sources})
    if writer.complete:
        print(f"{out}: already complete, nothing to do")
        return writer.manifest

    tasks = [(split, first, min(first + chunk, len(split_rows)))
             for split, split_rows in rows.items() for first in range(0, len(split_rows), chunk)
             if str(first) not in writer.done(split)]
    resumed = sum(-(-len(r) // chunk) for r in rows.values()) - len(tasks)
    shared = {"writer": writer, "genome": genome, "tracks": tracks, "blacklist": black,
                     "transform": transform, "target_length": target_length, "targets": targets,
                     "nonfinite_targets": nonfinite_targets}
    workers = (os.cpu_count() or 1) if workers is None else workers
    with progress_bar(sum(t[2] - t[1] for t in tasks), f"prepare {organism}", "seq",
                      enabled=progress) as bar, \
            producer_results(_write_chunk, tasks, shared, workers, _describe_chunk) as results:
        for split, first, count in results:
            writer.mark_done(split, str(first), {"count": count})
            bar.update(count)

    length = len(next(iter(rows.values()))[0])
    statistics = {"num_targets": len(tracks), "seq_length": length, "pool_width": POOL_WIDTH,
                  "crop_bp": (length - target_length * POOL_WIDTH) // 2, "target_length": target_length,
                  **{f"{split}_seqs": len(r) for split, r in rows.items()}}
    return writer.finish(targets_text=files.read_text(targets), statistics=statistics,
                         extra={"pool_width": POOL_WIDTH, "source_seq_length": length, "transform": transform,
                                "prepare": {"chunks_written": len(tasks), "chunks_from_earlier_runs": resumed}})


# --- the worker side: one chunk of regions -> its samples in the store --------------------------

def _write_chunk(task: tuple[str, int, int]) -> tuple[str, int, int]:
    """Samples first..end-1 of a split: each bigWig opened once, one read per region and track."""
    split, first, end = task
    inputs = worker_inputs
    writer: StoreWriter = inputs["writer"]
    genome: Genome = inputs["genome"]
    tracks, target_length = inputs["tracks"], inputs["target_length"]
    bigwigs = [BigWig(t.file, f"{inputs['targets']}, line {t.line}") for t in tracks]
    try:
        for i in range(first, end):
            chrom, start, stop = writer.window_of(split, i)
            t0 = target_start(writer.regions[split][i], target_length)
            target = region_targets(bigwigs, tracks, chrom, t0, t0 + target_length * POOL_WIDTH,
                                    inputs["blacklist"], inputs["transform"])
            target, _ = check_targets(target, inputs.get("nonfinite_targets", "refuse"),
                                      f"{split} region {i} ({chrom}:{t0}-{t0 + target_length * POOL_WIDTH})")
            writer.write(split, i, genome.fetch(chrom, start, stop), target)
        writer.sync(split)
    finally:
        for bw in bigwigs:
            bw.close()
    return split, first, end - first
