"""What one cross-replica batch-norm exchange costs on a CPU host: gloo's all_reduce against the
shared page (distributed/host_sum.py), measured.

Starts `--ranks` processes over gloo on this host; each sums a float64 vector of the sizes a batch
norm sends (2 x channels + 1 forward: 129 for the demo model's 64 channels, 3,073 for the full
model's 1,536) `--calls` times, first with all_reduce, then through the page; between calls each
rank works `--work-ms` milliseconds (0: back-to-back). Prints one table: microseconds a call
(median rank 0 saw over `--repeats` rounds) and whether the two give the same bits.

    python benchmarks/batchnorm_sums.py [--ranks 2] [--calls 500] [--work-ms 0] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

SIZES = (129, 3073)


def _spin(ms: float) -> None:
    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        pass


def _worker(rank, world, port, args, out):
    from enformer_train.distributed import host_sum, teardown

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    rows = []
    try:
        for size in SIZES:
            g = torch.Generator().manual_seed(rank)
            vector = torch.randn(size, generator=g, dtype=torch.float64)
            results, times = {}, {}
            for how in ("gloo all_reduce", "shared page"):
                if how == "shared page" and not host_sum.open_host_sum():
                    continue
                per_round = []
                for _ in range(args.repeats):
                    dist.barrier()
                    start = time.perf_counter()
                    for _ in range(args.calls):
                        _spin(args.work_ms)
                        results[how] = host_sum.sum_over_ranks(vector.clone())
                    per_round.append((time.perf_counter() - start) / args.calls - args.work_ms / 1000)
                times[how] = statistics.median(per_round) * 1e6
                host_sum.close_host_sum()
            same = len(results) == 2 and torch.equal(*results.values())
            rows.append((size, times, same))
    finally:
        teardown()
    if rank == 0:
        torch.save(rows, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--work-ms", type=float, default=0.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rows.pt")
        mp.spawn(_worker, args=(args.ranks, port, args, out), nprocs=args.ranks, join=True)
        rows = torch.load(out, weights_only=True)
    print(f"{args.ranks} ranks on {os.cpu_count()} cores, {args.calls} calls x {args.repeats} rounds, "
          f"{args.work_ms:g} ms of work between calls")
    print("| float64 values | gloo all_reduce | shared page | same bits |")
    print("|---|---|---|---|")
    for size, times, same in rows:
        page = f"{times['shared page']:.0f} us" if "shared page" in times else "not open (not x86-64)"
        print(f"| {size} | {times['gloo all_reduce']:.0f} us | {page} | {'yes' if same else 'no'} |")


if __name__ == "__main__":
    main()
