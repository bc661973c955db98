"""Memory over a long run: trains the tiny config (one process, 2 loader workers) on the demo's
synthetic barnyard and prints the resident memory of the trainer and of its loader workers every
`--every` steps (Rss, and Pss of all processes together, from /proc/PID/smaps_rollup). Memory is
flat when the trainer's Rss grows less than 5% after the first `--every` steps ('vs first'); the
workers' sum depends on how many exist at that moment (validation starts its own).

    python benchmarks/memory.py --out /tmp/enformer-memory --steps 5000 --every 500

The stores are prepared in --out on the first run (as `enformer-train demo` does).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def rss_mib(pid: int, field: str = "Rss") -> float:
    """Resident memory of a process (smaps_rollup's Rss), or its proportional share (Pss): a forked
    loader worker shares torch's pages with the trainer, which Rss counts twice and Pss once."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith(f"{field}:"))
        return kib / 1024
    except (FileNotFoundError, StopIteration, ProcessLookupError):
        return 0.0


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:
            pass
    return out


def last_step(metrics: Path) -> int:
    if not metrics.exists():
        return 0
    lines = [line for line in metrics.read_text().splitlines() if line.strip()]
    try:
        return json.loads(lines[-1])["step"] if lines else 0
    except ValueError:  # a line being written
        return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="enformer-memory")
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--every", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2, help="loader worker processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the trainer")
    args = parser.parse_args()

    from enformer_train.data.producers.prepare import prepare
    from enformer_train.demo.synthetic import BarnyardConfig, write_barnyard
    from enformer_train.demo import packaged_config

    root = Path(args.out).resolve()
    barnyard, run_dir = root / "barnyard", root / "run"
    if not (barnyard / "barnyard.json").exists():
        write_barnyard(str(barnyard), BarnyardConfig.demo())
    stores = {}
    for organism in ("human", "mouse"):
        stores[organism] = root / "stores" / organism
        prepare(str(stores[organism]), organism, str(barnyard / f"{organism}.fa"), str(barnyard / organism),
                sequence_length=6144, max_shift=3, workers=0, progress=False)
    command = [sys.executable, "-m", "enformer_train", "train", "--config", packaged_config("tiny.yaml"),
               *[f"data.stores.{o}={p}" for o, p in stores.items()], f"data.num_workers={args.workers}",
               f"train.run_dir={run_dir}", f"train.steps={args.steps}", "train.device=cpu", "train.log_every=10",
               f"train.eval_every={args.every * 2}", f"train.checkpoint_every={args.every * 2}",
               "train.eval_batches=4", "train.tensorboard=false"]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        metrics.unlink()
    started = time.time()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(f"tiny config, {args.steps} steps, batch 8, {args.workers} loader workers, 1 process, "
          f"{args.threads} torch thread(s)")
    print(f"{'step':>6} {'trainer Rss':>12} {'vs first':>9} {'workers':>8} {'workers Rss':>12} {'Pss all':>10} "
          f"{'s':>7}   (MiB; workers: the loaders' processes, 2 per organism, more during validation; "
          "Pss all: trainer and workers with shared pages counted once)", flush=True)
    first = None
    mark = args.every
    while proc.poll() is None and mark <= args.steps:
        if last_step(metrics) >= mark:
            kids = children(proc.pid)
            main_rss = rss_mib(proc.pid)
            workers = sum(rss_mib(c) for c in kids)
            total = rss_mib(proc.pid, "Pss") + sum(rss_mib(c, "Pss") for c in kids)
            first = first or main_rss
            print(f"{mark:>6} {main_rss:>12.1f} {100 * (main_rss / first - 1):>+8.1f}% {len(kids):>8} {workers:>12.1f} "
                  f"{total:>10.1f} {time.time() - started:>7.0f}", flush=True)
            mark += args.every
        time.sleep(0.2)
    if proc.wait() != 0:
        sys.exit(f"training exited with {proc.returncode}; run it by hand to see why: {' '.join(command)}")


if __name__ == "__main__":
    main()
