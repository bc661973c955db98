"""Data pipeline throughput at full size, one run, one table.

    python benchmarks/data.py [--records 24] [--batch 4] [--work DIR]

Writes full-size synthetic Basenji records (131,072 bp; 896 x 5,313 float16 targets, ZLIB, the real
format), prepares a 196,608-bp store from them, then measures per worker process (one core):
  (a) decoding the Basenji records (BasenjiRecords: inflate, both CRCs, Example parse),
  (b) the store with augmentation (shift, reverse complement) and collation into batches, with the
      page cache warm and cold (pages dropped with posix_fadvise before the pass),
  (c) where TensorFlow is installed, the seed's tf.data pipeline on the same records
      (TFRecordDataset ZLIB -> parse/decode_raw -> float32 -> shift -> reverse complement -> batch),
      restricted to one thread,
and compares with what 8 GPUs consume, derived from Enformer's FLOPs.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time


sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from enformer_train.data.formats.basenji import BasenjiRecords  # noqa: E402
from enformer_train.data.producers.prepare import prepare  # noqa: E402
from enformer_train.data.store import Store, sequence_file, target_file  # noqa: E402
from enformer_train.demo.synthetic import BarnyardConfig, write_barnyard  # noqa: E402

SEQUENCE_LENGTH = 196_608
FORWARD_FLOPS = 2.2e12  # full Enformer, one 196,608-bp sample
A100_FLOPS = 0.40 * 312e12  # bf16 at 40% utilisation
GPUS, CORES = 8, 16


def _dir_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def _drop_cache(paths) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def bench_records(folder: str) -> tuple[float, float]:
    records = BasenjiRecords(folder, "train")
    start, n, nbytes = time.perf_counter(), 0, 0
    for r in records:
        n += 1
        nbytes += r["sequence"].nbytes + r["target"].nbytes
    dt = time.perf_counter() - start
    return n / dt, nbytes / dt / 1e6


def bench_store(store_path: str, batch: int, passes: int, cold: bool, workers: int = 0) -> tuple[float, float]:
    from enformer_train.data.loader import Loader

    store = Store(store_path, "train")
    loader = Loader(store, batch, train=True, seed=0, num_workers=workers)
    steps = loader.steps_per_epoch * passes
    files = [os.path.join(store_path, f("train")) for f in (sequence_file, target_file)]
    it = iter(loader)
    if cold:
        _drop_cache(files)
    start, n = time.perf_counter(), 0
    for _ in range(steps):
        b = next(it)
        n += len(b["index"])
    dt = time.perf_counter() - start
    sample_bytes = store.window + store.target_length * store.num_targets * 2
    return n / dt, n * sample_bytes / dt / 1e6


def bench_tf(files: list[str], stats, batch: int, passes: int):
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import tensorflow as tf
    except ImportError:
        return None
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    def deserialize(serialized):
        example = tf.io.parse_example(serialized, {"sequence": tf.io.FixedLenFeature([], tf.string),
                                                   "target": tf.io.FixedLenFeature([], tf.string)})
        sequence = tf.cast(tf.reshape(tf.io.decode_raw(example["sequence"], tf.bool), (stats.seq_length, 4)), tf.float32)
        target = tf.cast(tf.reshape(tf.io.decode_raw(example["target"], tf.float16),
                                    (stats.target_length, stats.num_targets)), tf.float32)
        return {"sequence": sequence, "target": target}

    def shift(datum):  # the seed's augment_stochastic_shifts with pad value 0.25
        seq = datum["sequence"]
        amount = tf.random.uniform([], -2, 3, dtype=tf.int32)
        pad = 0.25 * tf.ones_like(seq[0:tf.abs(amount), :])
        seq = tf.cond(amount > 0, lambda: tf.concat([pad, seq[:-amount]], 0),
                      lambda: tf.cond(amount < 0, lambda: tf.concat([seq[-amount:], pad], 0), lambda: seq))
        return {"sequence": tf.ensure_shape(seq, (stats.seq_length, 4)), "target": datum["target"]}

    def reverse(datum):
        flip = tf.random.uniform([]) > 0.5
        seq, tgt = tf.cond(flip, lambda: (datum["sequence"][::-1, ::-1], datum["target"][::-1, :]),
                           lambda: (datum["sequence"], datum["target"]))
        return {"sequence": seq, "target": tgt}

    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    ds = (tf.data.TFRecordDataset(files, compression_type="ZLIB", num_parallel_reads=1)
          .map(deserialize, num_parallel_calls=1).map(shift, num_parallel_calls=1)
          .map(reverse, num_parallel_calls=1).batch(batch, drop_remainder=True).repeat(passes)
          .with_options(options))
    start, n = time.perf_counter(), 0
    for b in ds:
        n += int(b["sequence"].shape[0])
    dt = time.perf_counter() - start
    sample_bytes = stats.seq_length * 4 + stats.target_length * stats.num_targets * 2  # as stored in a record
    return n / dt, n * sample_bytes / dt / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--passes", type=int, default=8)
    parser.add_argument("--work", help="folder for the generated data (default: a temporary one, removed)")
    args = parser.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="enformer-data-bench-")
    try:
        config = BarnyardConfig(seq_length=131_072, pool_width=128, target_length=896, num_targets={"human": 5313},
                                num_regions=args.records, genome_size=2_000_000, num_chromosomes=2,
                                valid_fraction=0.0, test_fraction=0.0, motif_spacing=2000, enhancer_range=20_000)
        t = time.perf_counter()
        write_barnyard(os.path.join(work, "barnyard"), config, organisms=("human",))
        print(f"wrote {args.records} full-size records in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        folder = os.path.join(work, "barnyard", "human")
        store_path = os.path.join(work, "store")
        t = time.perf_counter()
        prepare(store_path, "human", os.path.join(work, "barnyard", "human.fa"), folder,
                sequence_length=SEQUENCE_LENGTH, max_shift=3, splits=("train",), workers=0, progress=False)
        prepare_rate = args.records / (time.perf_counter() - t)
        records_size = sum(os.path.getsize(os.path.join(folder, "tfrecords", f))
                           for f in os.listdir(os.path.join(folder, "tfrecords")) if f.startswith("train"))
        store_size = sum(os.path.getsize(os.path.join(store_path, f("train"))) for f in (sequence_file, target_file))

        rows = []
        rate, mbps = bench_records(folder)
        rows.append(("(a) Basenji records: inflate + 2 CRCs + parse", rate, mbps))
        rows.append(("    prepare (records + FASTA -> store), 1 process", prepare_rate, float("nan")))
        # Enformer's 5,313 human tracks are unstranded (no strand pairs): give the store such a
        # targets.txt for the main rows; the synthetic one, with 40% stranded tracks, gets its own row.
        stranded = open(os.path.join(store_path, "targets.txt")).read()
        with open(os.path.join(store_path, "targets.txt"), "w") as f:
            f.write(stranded.replace("+\t", "p\t").replace("-\t", "m\t"))
        rate, mbps = bench_store(store_path, args.batch, args.passes, cold=False)
        rows.append((f"(b) store + shift/rc + collate, warm, batch {args.batch}", rate, mbps))
        store_warm = rate
        rate, mbps = bench_store(store_path, 1, args.passes, cold=False)
        rows.append(("(b) same, batch 1 (the paper's per-device batch)", rate, mbps))
        rate, mbps = bench_store(store_path, args.batch, 1, cold=True)
        rows.append((f"(b) same, batch {args.batch}, cold (pages dropped)", rate, mbps))
        rate2, mbps2 = bench_store(store_path, args.batch, args.passes, cold=False, workers=2)
        rows.append((f"    same, batch {args.batch}, warm, 2 workers (2 cores, total)", rate2, mbps2))
        with open(os.path.join(store_path, "targets.txt"), "w") as f:
            f.write(stranded)
        rate, mbps = bench_store(store_path, args.batch, args.passes, cold=False)
        rows.append((f"    same, batch {args.batch}, warm, 2,126 tracks in strand pairs", rate, mbps))
        stats = BasenjiRecords(folder, "train").statistics
        files = BasenjiRecords(folder, "train").files
        tf_result = bench_tf(files, stats, args.batch, args.passes)
        if tf_result:
            rows.append(("(c) seed's tf.data pipeline, 1 thread", *tf_result))

        per_gpu = A100_FLOPS / (3 * FORWARD_FLOPS)
        need_per_core = GPUS * per_gpu / CORES
        sample_mb = (SEQUENCE_LENGTH + 6 + 896 * 5313 * 2) / 1e6
        print()
        print(f"{'path (one process = one core)':<52} {'samples/s':>10} {'MB/s':>8}")
        print("-" * 72)
        for name, rate, mbps in rows:
            print(f"{name:<52} {rate:>10.1f} {mbps:>8.0f}" if mbps == mbps else f"{name:<52} {rate:>10.1f} {'':>8}")
        print("-" * 72)
        if tf_result:
            print(f"{f'store (warm, batch {args.batch}) / tf.data, per core':<52} {store_warm / tf_result[0]:>9.1f}x")
        print(f"{'needed: 8 A100s at 40% of 312 TFLOP/s bf16, 16 cores':<52} {need_per_core:>10.1f} "
              f"{need_per_core * sample_mb:>8.0f}   per core")
        print(f"{'  (3 x 2.2e12 FLOPs a training sample: per GPU':<52} {per_gpu:>10.1f} {'':>8}   samples/s)")
        print(f"{'size on disk, train, per sample: Basenji records':<52} {records_size / args.records / 1e6:>9.2f} MB")
        print(f"{'                                 store (196,614 bp)':<52} {store_size / args.records / 1e6:>9.2f} MB "
              f"({store_size / records_size:.2f}x)")
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
