"""`enformer-train prepare`: Basenji records + FASTA + sequences.bed -> a training store.

For each split, row i of the split in sequences.bed is record i of the split's TFRecords (files in
numeric order, each holding any number of records: they are counted first, in parallel, so the
rows of every file are known before any is converted). Each record's sequence is checked against the FASTA at the BED coordinates (N on
either side aside): a mismatch means the records and the BED are out of step (reading TFRecords in
parallel interleaves them, baskerville #37) or the genome is another build. Past a small rate of
such rows prepare stops, naming the first ones.

Records written by baskerville's hound tools come at other resolutions (pool_width 32, crop_bp
32768) with sequences.bed rows that hold the target span, not the sequence span: such rows are
widened by crop_bp on each side, and adjacent bins are summed to 128 bp (the model's resolution)
when the pool width divides 128.

The store keeps, per sample, the window of `sequence_length + 2 * max_shift` bases centred on the BED region,
read from the FASTA (so the extension beyond Basenji's 131,072 bp and the shift margin are real
genome, N past a chromosome end), and the record's targets unchanged.

Work is one task per TFRecord file, run by a pool of processes; each writes its samples at their
fixed offsets (a worker that dies, e.g. out of memory, ends the run naming its file). prepare-state.json lists the files done, so a rerun of the same command resumes; a
rerun with other inputs or options starts clean. manifest.json, which makes the store readable, is
written only at the very end. The store's files, resume state and manifest are StoreWriter's
(store.py); this module only reads records and the genome and hands samples to it.
"""
from __future__ import annotations

import os
from dataclasses import replace

import numpy as np

from ... import files
from ...errors import UserError
from ...progress import progress as progress_bar
from ..formats.basenji import BasenjiRecords, Statistics, onehot_to_codes, split_files
from ..formats.genome import Genome
from ..formats.intervals import SPLITS, Region, by_split, check_splits, read_bed
from ..formats.tfrecord import count_tfrecords
from ..store import StoreWriter, check_targets
from .pool import pool_results, producer_results, worker_inputs

DEFAULT_SEQUENCE_LENGTH = 196_608  # the model's input in bp
RECORDS_PER_FILE = 256  # Basenji's basenji_data.py --seqs_per_tfr default (the barnyard data's); not assumed
MODEL_BIN = 128  # bp per output bin of Enformer


def pool_targets(target: np.ndarray, factor: int) -> np.ndarray:
    """[target_length, tracks] float16 at pool_width w -> [target_length / factor, tracks] float16 at
    w * factor: sums of `factor` adjacent bins (Basenji's targets are sums over their bins), in float32."""
    if factor == 1:
        return target
    length, tracks = target.shape
    return target.astype(np.float32).reshape(length // factor, factor, tracks).sum(axis=1).astype(np.float16)


def _resolution(statistics: Statistics, statistics_path: str, bin_size: int = MODEL_BIN) -> int:
    """How many adjacent bins make one `bin_size`-bp bin of the store; a pool width that does not
    divide it is refused."""
    width = statistics.pool_width
    if width <= 0 or bin_size % width:
        raise UserError(f"{statistics_path}: pool_width {width} does not divide {bin_size}, so its bins cannot be "
                        f"summed to the model's {bin_size}-bp bins; write the records at a pool width that "
                        f"divides {bin_size} (1, 2, 4, ...)")
    factor = bin_size // width
    if statistics.target_length % factor:
        raise UserError(f"{statistics_path}: target_length {statistics.target_length} at pool_width {width} is not a "
                        f"whole number of {bin_size}-bp bins")
    return factor


def _sequence_rows(rows: list[Region], statistics: Statistics) -> list[Region]:
    """Rows as sequence spans: baskerville's rows hold the target span (seq_length - 2 crop_bp), and
    are widened by crop_bp on each side; Basenji's already hold the sequence span."""
    target_span = statistics.seq_length - 2 * statistics.crop_bp
    if statistics.crop_bp and rows and all(len(r) == target_span for r in rows):
        return [replace(r, start=r.start - statistics.crop_bp, end=r.end + statistics.crop_bp) for r in rows]
    return rows


# --- the worker side: one TFRecord file -> its samples in the store ---------------------------

# What every file conversion of this process reads (statistics, genome, writer): pool.worker_inputs.
def _convert_file(task: tuple[str, int, str, int, int]) -> dict:
    split, number, path, first, expected = task
    inputs = worker_inputs
    stats: Statistics = inputs["statistics"]
    writer: StoreWriter = inputs["writer"]
    rows: list[Region] = writer.regions[split]
    genome: Genome = inputs["genome"]
    mismatches = []
    count = 0
    nonfinite = None  # per track: non-finite targets replaced by 0 (--nonfinite-targets zero)
    for k, record in enumerate(BasenjiRecords(path, statistics=stats).iter_file(path)):
        if k >= expected:
            raise UserError(f"{path}: more than the {expected} records counted before converting; "
                            f"was the file replaced while prepare ran? Run the command again")
        i = first + k
        region = rows[i]
        try:
            record_codes = onehot_to_codes(record["sequence"])
        except ValueError as e:
            raise UserError(f"{path}: record {k} (counting from 0): the sequence is not one-hot ({e})") from None
        genome_codes = genome.fetch(region.chrom, region.start, region.end)
        differ = (record_codes != genome_codes) & (record_codes != 4) & (genome_codes != 4)
        if differ.any():
            mismatches.append((i, region.line, region.chrom, region.start, region.end, int(differ.sum())))
        target, replaced = check_targets(record["target"], inputs["nonfinite_targets"],
                                         f"{path}: record {k} (counting from 0; BED line {region.line}, "
                                         f"{region.chrom}:{region.start}-{region.end})")
        nonfinite = replaced if nonfinite is None else nonfinite + replaced
        writer.write(split, i, genome.fetch(*writer.window_of(split, i)), pool_targets(target, inputs["pool_factor"]))
        count += 1
    if count != expected:
        raise UserError(f"{path}: {count} records, but {expected} were counted before converting; was the "
                        f"file replaced while prepare ran? Run the command again")
    writer.sync(split)
    return {"split": split, "file": number, "count": count, "mismatches": mismatches,
            "nonfinite": [] if nonfinite is None or not nonfinite.any() else nonfinite.tolist()}


# --- the parent side ---------------------------------------------------------------------------


def _mismatch_error(split: str, mismatches: list, rows_done: int, allowed: int, bed: str, basenji: str) -> UserError:
    mismatches = sorted(mismatches)
    shown = "; ".join(f"line {line} {chrom}:{start}-{end} ({n} bases differ)"
                      for _, line, chrom, start, end, n in mismatches[:5])
    return UserError(
        f"{bed}: {len(mismatches)} {split} rows of {rows_done} read so far do not match their records in "
        f"{basenji} (at most {allowed} allowed), first: {shown}. Row i of a split must be record i of that "
        f"split's files in numeric order: check that the records were not re-written with interleaved "
        f"(parallel) reads, and that the FASTA is the genome the BED was made from")


def _count_one(path: str) -> tuple[str, int]:
    return path, count_tfrecords(path)


def _nothing() -> None:
    """A counting worker needs no set-up."""


def _count_records(paths: list[str], workers: int) -> dict[str, int]:
    """{path: records it holds}, counted by `workers` processes (0: in this one); a worker that dies
    is a one-line error naming its file."""
    with pool_results(_count_one, paths, _nothing, (), workers, lambda path: f"counting the records of {path}") as results:
        return dict(results)


def _plan(basenji: str, bed: str, statistics_path: str, statistics: Statistics, rows: dict[str, list[Region]],
          splits: tuple[str, ...], sequence_length: int, workers: int,
          records_per_file: int | None = None) -> dict[str, list[tuple[str, int]]]:
    """{split: its TFRecord files and the records each holds}, after checking the BED,
    statistics.json and the files agree."""
    plan = {}
    for split in splits:
        split_rows = rows.get(split, [])
        expected = statistics.counts.get(split, len(split_rows))
        if len(split_rows) != expected:
            raise UserError(f"{bed}: {len(split_rows)} {split} rows, but {statistics_path} says "
                            f"{split}_seqs = {expected}; the BED and the records must come from the same dataset")
        for region in split_rows:
            if len(region) != statistics.seq_length:
                raise UserError(f"{bed}, line {region.line}: region of {len(region)} bp, expected seq_length "
                                f"{statistics.seq_length} from {statistics_path} (or seq_length - 2 x crop_bp = "
                                f"{statistics.seq_length - 2 * statistics.crop_bp}, baskerville's target span)")
            if (len(region) - sequence_length) % 2:
                raise UserError(f"--context {sequence_length}: differs from the {len(region)}-bp regions by an odd "
                                f"number, so windows cannot be centred; use an even difference")
        plan[split] = split_files(basenji, split)
    counts = _count_records([p for paths in plan.values() for p in paths], workers)
    for split, paths in plan.items():
        plan[split] = [(p, counts[p]) for p in paths]
        held, expected = sum(counts[p] for p in paths), len(rows.get(split, []))
        if held != expected:
            shown = ", ".join(f"{p.rsplit('/', 1)[-1]} {counts[p]}" for p in paths[:4]) + (", ..." if len(paths) > 4 else "")
            raise UserError(f"{basenji}: the {len(paths)} {split} files hold {held} records ({shown}), but {bed} has "
                            f"{expected} {split} rows; the BED and the records must come from the same dataset")
        if records_per_file is not None:
            odd = [p for p in paths[:-1] if counts[p] != records_per_file]
            if odd:
                raise UserError(f"{odd[0]}: {counts[odd[0]]} records, expected {records_per_file} "
                                f"(--records-per-file); leave the option out to take the files as they are")
    return plan


def _sources(fasta: str, bed: str, basenji: str, statistics: Statistics, sizes: dict[str, int]) -> tuple[dict, dict]:
    """The store's sources (kept in its manifest) and the inputs its fingerprint depends on."""
    sources = {
        "fasta": {"path": os.path.abspath(fasta), "size": os.path.getsize(fasta)},
        "bed": {"path": bed if files.is_url(bed) else os.path.abspath(bed), "size": files.size(bed)},
        "basenji": {"path": basenji if files.is_url(basenji) else os.path.abspath(basenji),
                    "statistics.json": statistics.to_json(), "files": sizes},
    }
    # What the store depends on, except the sizes of the TFRecord files: a file replaced since an
    # interrupted run (a corrupt download fetched again) is converted again, the others are kept.
    inputs = {"sources": {key: value for key, value in sources.items() if key != "basenji"},
              "basenji": {"path": sources["basenji"]["path"], "statistics.json": statistics.to_json(),
                          "files": sorted(sizes)}}
    return sources, inputs


def _pending(writer: StoreWriter, plan: dict[str, list[tuple[str, int]]],
             sizes: dict[str, int]) -> tuple[list[tuple[str, int, str, int, int]], dict[str, list[dict]]]:
    """The files still to convert, as tasks (split, file number, path, first row, rows), and the
    records of those converted earlier: a file is done when its record says it was converted from a
    file of today's size."""
    tasks, earlier = [], {split: [] for split in plan}
    for split, paths in plan.items():
        first = 0
        for number, (path, count) in enumerate(paths):
            record = writer.done(split).get(str(number))
            if isinstance(record, dict) and record["size"] == sizes[path.rsplit("/", 1)[-1]] \
                    and record["count"] == count:
                earlier[split].append(record)
            elif count:
                tasks.append((split, number, path, first, count))
            first += count
    return tasks, earlier


def _describe_file(task) -> str:
    return f"{task[0]} file {task[1]} ({task[2]})"


def prepare(out: str, organism: str, fasta: str, basenji: str, bed: str | None = None,
            sequence_length: int = DEFAULT_SEQUENCE_LENGTH, max_shift: int = 3, splits: tuple[str, ...] = SPLITS,
            workers: int | None = None, records_per_file: int | None = None,
            max_mismatch_rate: float = 0.01, restart: bool = False, progress: bool = True,
            nonfinite_targets: str = "refuse", bin_size: int = MODEL_BIN) -> dict:
    """Build (or finish) the store in `out`; returns its manifest. See the module docstring.

    `bin_size`: bp per target bin in the store, the model's output bin (2^(num_conv_tower_blocks + 1),
    Enformer's 128); records at a finer pool width have their bins summed to it.

    The records of each TFRecord file are counted; `records_per_file`, when given, is a check that
    every file but a split's last holds that many."""
    if sequence_length <= 0 or max_shift < 0 or (records_per_file is not None and records_per_file <= 0):
        raise UserError("--context and --records-per-file must be positive and --max-shift >= 0")
    check_splits(splits)
    workers = (os.cpu_count() or 1) if workers is None else workers
    bed = bed or files.join(basenji, "sequences.bed")
    statistics_path = files.join(basenji, "statistics.json")
    statistics = Statistics.read(statistics_path)
    pool_factor = _resolution(statistics, statistics_path, bin_size)
    genome = Genome(fasta)
    rows = {split: _sequence_rows(split_rows, statistics) for split, split_rows in by_split(read_bed(bed, genome)).items()}
    stored = replace(statistics, pool_width=bin_size, target_length=statistics.target_length // pool_factor)
    basenji_targets = files.join(basenji, "targets.txt")
    has_targets = files.exists(basenji_targets)

    # Check the inputs against each other before writing anything.
    plan = _plan(basenji, bed, statistics_path, statistics, rows, splits, sequence_length, workers, records_per_file)
    sizes = {p.rsplit("/", 1)[-1]: files.size(p) for ps in plan.values() for p, _ in ps}
    sources, inputs = _sources(fasta, bed, basenji, statistics, sizes)
    writer = StoreWriter(out, organism, {s: rows[s] for s in splits},
                         sequence_length=sequence_length, max_shift=max_shift,
                         target_length=stored.target_length, num_targets=statistics.num_targets,
                         inputs=inputs, sources=sources, restart=restart)
    if writer.complete:
        print(f"{out}: already complete, nothing to do")
        return writer.manifest

    tasks, earlier = _pending(writer, plan, sizes)
    mismatches = {s: [tuple(m) for r in earlier[s] for m in r["mismatches"]] for s in splits}
    rows_done = {s: sum(r["count"] for r in earlier[s]) for s in splits}
    allowed = {split: int(max_mismatch_rate * len(rows[split])) for split in splits}
    nonfinite = {s: _sum_counts(r.get("nonfinite", []) for r in earlier[s]) for s in splits}
    shared = {"statistics": statistics, "genome": genome, "writer": writer,
                     "nonfinite_targets": nonfinite_targets, "pool_factor": pool_factor}
    with progress_bar(sum(t[4] for t in tasks), f"prepare {organism}", "seq", enabled=progress) as bar, \
            producer_results(_convert_file, tasks, shared, workers, _describe_file) as results:
        for result in results:
            split = result["split"]
            mismatches[split] += result["mismatches"]
            rows_done[split] += result["count"]
            if len(mismatches[split]) > allowed[split]:
                raise _mismatch_error(split, mismatches[split], rows_done[split], allowed[split], bed, basenji)
            name = plan[split][result["file"]][0].rsplit("/", 1)[-1]
            nonfinite[split] = _sum_counts([nonfinite[split], result["nonfinite"]])
            writer.mark_done(split, str(result["file"]), {"size": sizes[name], "count": result["count"],
                                                          "mismatches": result["mismatches"],
                                                          **({"nonfinite": result["nonfinite"]} if result["nonfinite"] else {})})
            bar.update(result["count"])

    return writer.finish(
        targets_text=files.read_text(basenji_targets) if has_targets else None, statistics=stored.to_json(),
        extra={"pool_width": bin_size, "source_pool_width": statistics.pool_width,
               "source_seq_length": statistics.seq_length,
               "prepare": {"files_converted": len(tasks), "files_from_earlier_runs": sum(map(len, earlier.values()))}},
        split_extra={split: {"mismatched_rows": len(mismatches[split]),
                             **_nonfinite_report(out, split, nonfinite[split])} for split in splits})


def _sum_counts(lists) -> list[int]:
    """Per-track counts added up ([] is all zeros)."""
    total: list[int] = []
    for counts in lists:
        if len(counts) > len(total):
            total += [0] * (len(counts) - len(total))
        for t, n in enumerate(counts):
            total[t] += n
    return total


def _nonfinite_report(out: str, split: str, counts: list[int]) -> dict:
    """Say how many non-finite targets were stored as 0 (--nonfinite-targets zero); the manifest's entry."""
    if not any(counts):
        return {}
    tracks = {t: n for t, n in enumerate(counts) if n}
    print(f"{out}: {split}: {sum(tracks.values())} non-finite targets stored as 0, in tracks "
          + ", ".join(f"{t} ({n})" for t, n in list(tracks.items())[:10]) + (" ..." if len(tracks) > 10 else ""))
    return {"nonfinite_targets_zeroed": {str(t): n for t, n in tracks.items()}}
