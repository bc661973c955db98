"""`enformer-train prepare`: Basenji records + FASTA + sequences.bed -> a training store.

For each split, row i of the split in sequences.bed is record i of the split's TFRecords (files in
numeric order). Each record's sequence is checked against the FASTA at the BED coordinates (N on
either side aside): a mismatch means the records and the BED are out of step (reading TFRecords in
parallel interleaves them, baskerville #37) or the genome is another build. Past a small rate of
such rows prepare stops, naming the first ones.

The store keeps, per sample, the window of `context + 2 * max_shift` bases centred on the BED region,
read from the FASTA (so the extension beyond Basenji's 131,072 bp and the shift margin are real
genome, N past a chromosome end), and the record's targets unchanged.

Work is one task per TFRecord file, run by a pool of processes; each writes its samples at their
fixed offsets. prepare-state.json lists the files done, so a rerun of the same command resumes; a
rerun with other inputs or options starts clean. manifest.json, which makes the store readable, is
written only at the very end.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import signal

import numpy as np

from ..errors import UserError
from .. import files
from .basenji import BasenjiRecords, Statistics, onehot_to_codes, split_files
from .genome import Genome
from .intervals import SPLITS, Region, by_split, read_bed
from .store import FORMAT, FORMAT_VERSION, MANIFEST, STATE, regions_file, sequence_file, target_file

DEFAULT_CONTEXT = 196_608
RECORDS_PER_FILE = 256  # Basenji's basenji_data.py --seqs_per_tfr default, used for the barnyard data


def add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--organism", required=True, help="name of the organism / head, e.g. human or mouse")
    parser.add_argument("--fasta", required=True, help="genome FASTA (hg38.ml.fa, mm10.ml.fa); a .fai is built if missing")
    parser.add_argument("--basenji", required=True, metavar="DIR",
                        help="Basenji organism folder (statistics.json, targets.txt, tfrecords/); local or a fsspec URL such as gs://")
    parser.add_argument("--bed", help="sequences.bed (default: DIR/sequences.bed)")
    parser.add_argument("--out", required=True, metavar="STORE", help="store folder to write")
    parser.add_argument("--context", type=int, default=DEFAULT_CONTEXT, help="input length in bp (default 196608)")
    parser.add_argument("--max-shift", type=int, default=3, help="margin kept each side for shift augmentation (default 3)")
    parser.add_argument("--splits", default=",".join(SPLITS), help="comma-separated splits (default train,valid,test)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes converting files in parallel (0: in this process; default: all cores)")
    parser.add_argument("--records-per-file", type=int, default=RECORDS_PER_FILE,
                        help="records in every TFRecord file but a split's last (Basenji: 256)")
    parser.add_argument("--max-mismatch-rate", type=float, default=0.01,
                        help="fraction of rows whose record may differ from the FASTA before prepare stops (default 0.01)")
    parser.add_argument("--restart", action="store_true", help="discard an unfinished store in STORE and start again")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_prepare(args: argparse.Namespace) -> None:
    manifest = prepare(
        out=args.out, organism=args.organism, fasta=args.fasta, basenji=args.basenji, bed=args.bed,
        context=args.context, max_shift=args.max_shift, splits=tuple(s for s in args.splits.split(",") if s),
        workers=args.workers, records_per_file=args.records_per_file,
        max_mismatch_rate=args.max_mismatch_rate, restart=args.restart, progress=not args.no_progress)
    counts = ", ".join(f"{split} {info['count']}" for split, info in manifest["splits"].items())
    print(f"{args.out}: {manifest['organism']} store complete ({counts}; window {manifest['window']} bp, "
          f"targets {manifest['target_length']} x {manifest['num_targets']})")


def _window_start(region: Region, context: int, max_shift: int) -> int:
    return region.start + (len(region) - context) // 2 - max_shift


# --- the worker side: one TFRecord file -> its samples in the store ---------------------------

_job: dict = {}


def _init_worker(job: dict) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and ends the pool
    _job.clear()
    _job.update(job)
    _job["fds"] = {}


def _convert_file(task: tuple[str, int, str, int, int]) -> dict:
    split, number, path, first, expected = task
    job = _job
    stats: Statistics = job["statistics"]
    rows: list[Region] = job["rows"][split]
    genome: Genome = job["genome"]
    context, max_shift = job["context"], job["max_shift"]
    window = context + 2 * max_shift
    target_bytes = stats.target_length * stats.num_targets * 2
    fds = job["fds"]
    for key, name in (("sequence", sequence_file(split)), ("target", target_file(split))):
        if (split, key) not in fds:
            fds[split, key] = os.open(os.path.join(job["out"], name), os.O_WRONLY)
    mismatches = []
    count = 0
    for k, record in enumerate(BasenjiRecords(path, statistics=stats).iter_file(path)):
        if k >= expected:
            raise UserError(f"{path}: more than {expected} records; expected {expected} (files of "
                            f"{job['records_per_file']} records, the split's rows in sequences.bed); "
                            f"pass --records-per-file if the files were written with another size")
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
        start = _window_start(region, context, max_shift)
        sequence = genome.fetch(region.chrom, start, start + window)
        os.pwrite(fds[split, "sequence"], sequence.tobytes(), i * window)
        os.pwrite(fds[split, "target"], np.ascontiguousarray(record["target"], dtype="<f2").data, i * target_bytes)
        count += 1
    if count != expected:
        raise UserError(f"{path}: {count} records, expected {expected} (files of {job['records_per_file']} "
                        f"records, the split's rows in sequences.bed); the file is incomplete, or pass "
                        f"--records-per-file if the files were written with another size")
    os.fdatasync(fds[split, "sequence"])
    os.fdatasync(fds[split, "target"])
    return {"split": split, "file": number, "count": count, "mismatches": mismatches}


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


def prepare(out: str, organism: str, fasta: str, basenji: str, bed: str | None = None,
            context: int = DEFAULT_CONTEXT, max_shift: int = 3, splits: tuple[str, ...] = SPLITS,
            workers: int | None = None, records_per_file: int = RECORDS_PER_FILE,
            max_mismatch_rate: float = 0.01, restart: bool = False, progress: bool = True) -> dict:
    """Build (or finish) the store in `out`; returns its manifest. See the module docstring."""
    from tqdm import tqdm

    if context <= 0 or max_shift < 0 or records_per_file <= 0:
        raise UserError("--context and --records-per-file must be positive and --max-shift >= 0")
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        raise UserError(f"--splits: unknown split {unknown[0] if unknown else '(none)'!r}; "
                        f"expected a comma-separated subset of {','.join(SPLITS)}")
    workers = (os.cpu_count() or 1) if workers is None else workers
    bed = bed or files.join(basenji, "sequences.bed")
    statistics_path = files.join(basenji, "statistics.json")
    statistics = Statistics.read(statistics_path)
    genome = Genome(fasta)
    rows = by_split(read_bed(bed, genome))
    targets_path = files.join(basenji, "targets.txt")
    has_targets = files.exists(targets_path)

    # Check the inputs against each other before writing anything.
    window = context + 2 * max_shift
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
                                f"{statistics.seq_length} from {statistics_path}")
            if (len(region) - context) % 2:
                raise UserError(f"--context {context}: differs from the {len(region)}-bp regions by an odd "
                                f"number, so windows cannot be centred; use an even difference")
        paths = split_files(basenji, split)
        if len(paths) != max(1, math.ceil(expected / records_per_file)):
            raise UserError(f"{basenji}: {len(paths)} {split} files for {expected} records, expected "
                            f"{math.ceil(expected / records_per_file)} files of {records_per_file}; pass "
                            f"--records-per-file if the files were written with another size")
        plan[split] = paths
    sources = {
        "fasta": {"path": os.path.abspath(fasta), "size": os.path.getsize(fasta)},
        "bed": {"path": bed if files.is_url(bed) else os.path.abspath(bed), "size": files.size(bed)},
        "basenji": {"path": basenji if files.is_url(basenji) else os.path.abspath(basenji),
                    "statistics.json": statistics.to_json(),
                    "files": {p.rsplit("/", 1)[-1]: files.size(p) for ps in plan.values() for p in ps}},
    }
    # What the store depends on, except the sizes of the TFRecord files: a file replaced since an
    # interrupted run (a corrupt download fetched again) is converted again, the others are kept.
    fingerprint = {"format_version": FORMAT_VERSION, "organism": organism, "context": context,
                   "max_shift": max_shift, "splits": list(splits), "records_per_file": records_per_file,
                   "sources": {key: value for key, value in sources.items() if key != "basenji"},
                   "basenji": {"path": sources["basenji"]["path"], "statistics.json": statistics.to_json(),
                               "files": sorted(sources["basenji"]["files"])}}

    # Resume, restart clean, or refuse a folder that is not ours.
    manifest_path, state_path = os.path.join(out, MANIFEST), os.path.join(out, STATE)
    ours = [MANIFEST, STATE, "targets.txt", "statistics.json"] + [
        f(s) for s in SPLITS for f in (sequence_file, target_file, regions_file)]
    state = None
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            manifest = json.load(f)
        if (manifest.get("complete") and manifest.get("fingerprint") == fingerprint
                and manifest.get("sources") == sources):
            print(f"{out}: already complete, nothing to do")
            return manifest
        if not restart:
            raise UserError(f"{out}: holds a store made from other inputs or options; choose another --out, "
                            f"or pass --restart to replace it")
    if os.path.exists(state_path) and not restart:
        with open(state_path) as f:
            try:
                state = json.load(f)
            except json.JSONDecodeError:
                state = None
        if state is not None and state.get("fingerprint") != fingerprint:
            state = None  # other inputs or options: start clean
    elif os.path.isdir(out) and not os.path.exists(state_path) and not os.path.exists(manifest_path):
        foreign = [n for n in os.listdir(out) if n not in ours and not n.endswith(".tmp")]
        if foreign:
            raise UserError(f"{out}: exists and holds other files ({foreign[0]}, ...); choose an empty or new folder")
    os.makedirs(out, exist_ok=True)
    if state is None:
        for name in ours:
            if os.path.exists(os.path.join(out, name)):
                os.remove(os.path.join(out, name))
        state = {"fingerprint": fingerprint, "done": {split: {} for split in splits},
                 "mismatches": {split: [] for split in splits}, "rows_done": {split: 0 for split in splits}}
        target_bytes = statistics.target_length * statistics.num_targets * 2
        for split in splits:
            n = len(rows[split])
            for name, size in ((sequence_file(split), n * window), (target_file(split), n * target_bytes)):
                with open(os.path.join(out, name), "wb") as f:
                    f.truncate(size)  # sparse until written
            with open(os.path.join(out, regions_file(split)), "w") as f:
                for region in rows[split]:
                    start = _window_start(region, context, max_shift)
                    f.write(f"{region.chrom}\t{start}\t{start + window}\t{region.line}\n")
        files.write_json(state_path, state)

    tasks = []
    for split in splits:
        n = len(rows[split])
        for number, path in enumerate(plan[split]):
            name = path.rsplit("/", 1)[-1]
            if state["done"][split].get(str(number)) != sources["basenji"]["files"][name]:
                first = number * records_per_file
                tasks.append((split, number, path, first, min(records_per_file, n - first)))
    resumed = sum(len(plan[split]) for split in splits) - len(tasks)
    job = {"statistics": statistics, "rows": {s: rows[s] for s in splits}, "genome": genome, "out": out,
           "context": context, "max_shift": max_shift, "records_per_file": records_per_file}
    mismatches = {split: [tuple(m) for m in state["mismatches"][split]] for split in splits}
    rows_done = state["rows_done"]
    for split, number, _, first, count in tasks:  # files converted again forget their earlier results
        if str(number) in state["done"][split]:
            del state["done"][split][str(number)]
            rows_done[split] -= count
        mismatches[split] = [m for m in mismatches[split] if not first <= m[0] < first + count]
    allowed = {split: int(max_mismatch_rate * len(rows[split])) for split in splits}
    bar = tqdm(total=sum(t[4] for t in tasks), unit="seq", desc=f"prepare {organism}", disable=not progress)
    pool = None
    try:
        if workers > 0 and len(tasks) > 1:
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            pool = multiprocessing.get_context(method).Pool(min(workers, len(tasks)), _init_worker, (job,))
            results = pool.imap_unordered(_convert_file, tasks)
        else:
            _init_worker(job)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            results = map(_convert_file, tasks)
        for result in results:
            split = result["split"]
            mismatches[split] += result["mismatches"]
            rows_done[split] += result["count"]
            state["rows_done"] = rows_done
            if len(mismatches[split]) > allowed[split]:
                raise _mismatch_error(split, mismatches[split], rows_done[split], allowed[split], bed, basenji)
            name = plan[split][result["file"]].rsplit("/", 1)[-1]
            state["done"][split][str(result["file"])] = sources["basenji"]["files"][name]
            state["mismatches"][split] = mismatches[split]
            files.write_json(state_path, state)
            bar.update(result["count"])
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
        for fd in _job.get("fds", {}).values():
            os.close(fd)
        _job.clear()

    if has_targets:
        with open(os.path.join(out, "targets.txt"), "w") as f:
            f.write(files.read_text(targets_path))
    files.write_json(os.path.join(out, "statistics.json"), statistics.to_json())
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "complete": True, "organism": organism,
        "context": context, "max_shift": max_shift, "window": window,
        "target_length": statistics.target_length, "num_targets": statistics.num_targets,
        "pool_width": statistics.pool_width, "source_seq_length": statistics.seq_length,
        "splits": {split: {"count": len(rows[split]), "sequence": sequence_file(split),
                           "target": target_file(split), "regions": regions_file(split),
                           "mismatched_rows": len(mismatches[split])} for split in splits},
        "sources": sources, "fingerprint": fingerprint,
        "prepare": {"files_converted": len(tasks), "files_from_earlier_runs": resumed},
    }
    files.write_json(manifest_path, manifest)
    os.remove(state_path)
    return manifest
