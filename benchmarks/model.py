"""Forward+backward (or inference) time and peak memory of this Enformer against enformer-pytorch.

Same config (the official colab's quarter width: channels 384, 11 layers, 196,608 bp), same
weights (converted from the enformer-pytorch model), same input, batch 1, CPU: a training step
(training mode, forward + backward) or, with --what infer, an inference (eval mode,
torch.no_grad()). With --compile this project's model runs a third time, compiled as the commands
compile it (compiling.compile_model); its first step (the compilation) is reported apart, and, as
the commands do when they compile on a CPU, glibc keeps its freed memory
(compiling.keep_freed_memory). Each model runs in its own fresh process so that peak memory is its own: peak RSS during the steps minus RSS before them, i.e. what the step itself
allocates. "faults" are the minor page faults of a step (the kernel handing out and zeroing a fresh
page): glibc returns every freed block over 32 MiB to the system, so each step's large activations
are new pages again. --keep-freed-memory sets glibc's MALLOC_MMAP_THRESHOLD_ and
MALLOC_TRIM_THRESHOLD_ (2 GiB) for every model's process alike, so that freed blocks are reused.

    USE_TF=0 python benchmarks/model.py [--steps 3] [--threads 2] [--channels 384] [--what train|infer] [--compile]
                                        [--keep-freed-memory]
Needs `pip install enformer-pytorch`.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("USE_TF", "0")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _child(which: str, args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    state = torch.load(args.weights, weights_only=True)
    x = torch.load(args.input, weights_only=True)
    if which == "enformer-pytorch":
        from enformer_pytorch import Enformer as Reference

        model = Reference.from_hparams(dim=args.channels, depth=args.layers, heads=8,
                                       output_heads=dict(human=5313, mouse=1643), target_length=896)
        model.load_state_dict(state)
        inputs = torch.eye(5, 4)[x.long()]
    else:
        from enformer_train.model.convert import from_enformer_pytorch

        model = from_enformer_pytorch(state)
        inputs = x
    training = args.what == "train"
    model.train(training)
    if which == "enformer-train-compiled":
        from enformer_train.compiling import compile_model, keep_freed_memory

        keep_freed_memory(torch.device("cpu"))  # as the commands do when they compile on a CPU
        call = compile_model(model)  # with the commands' options
    else:
        call = model
    times, faults = [], []
    base = _rss_bytes()
    for _ in range(args.steps + 1):  # the first step warms up allocators and caches (and compiles)
        start, faulted = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        if training:
            out = call(inputs)
            loss = out["human"].mean() + out["mouse"].mean()
            loss.backward()
            model.zero_grad(set_to_none=True)
            del loss
        else:
            with torch.no_grad():
                out = call(inputs)
        times.append(time.perf_counter() - start)
        del out
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faulted)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"seconds": statistics.median(times[1:]), "peak_bytes": peak - base, "first_seconds": times[0],
            "faults": int(statistics.median(faults[1:]))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--channels", type=int, default=384)
    p.add_argument("--layers", type=int, default=11)
    p.add_argument("--length", type=int, default=196_608)
    p.add_argument("--what", choices=["train", "infer"], default="train")
    p.add_argument("--compile", action="store_true", help="also this project's model under torch.compile")
    p.add_argument("--keep-freed-memory", action="store_true",
                   help="every model's process keeps freed memory for reuse (glibc's MALLOC_MMAP_THRESHOLD_ "
                        "and MALLOC_TRIM_THRESHOLD_)")
    p.add_argument("--child", choices=["enformer-pytorch", "enformer-train", "enformer-train-compiled"])
    p.add_argument("--weights")
    p.add_argument("--input")
    args = p.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args)))
        return

    import torch
    from enformer_pytorch import Enformer as Reference

    torch.manual_seed(0)
    reference = Reference.from_hparams(dim=args.channels, depth=args.layers, heads=8,
                                       output_heads=dict(human=5313, mouse=1643), target_length=896)
    with tempfile.TemporaryDirectory() as tmp:
        weights, inputs = os.path.join(tmp, "weights.pt"), os.path.join(tmp, "input.pt")
        torch.save(reference.state_dict(), weights)
        torch.save(torch.randint(0, 5, (1, args.length), dtype=torch.uint8), inputs)
        del reference
        results = {}
        env = dict(os.environ)
        if args.keep_freed_memory:
            from enformer_train.compiling import KEEP_FREED_BYTES  # the commands' mmap threshold

            env.update(MALLOC_MMAP_THRESHOLD_=str(KEEP_FREED_BYTES), MALLOC_TRIM_THRESHOLD_=str(KEEP_FREED_BYTES))
        for which in ("enformer-pytorch", "enformer-train") + (("enformer-train-compiled",) if args.compile else ()):
            cmd = [sys.executable, __file__, "--child", which, "--weights", weights, "--input", inputs,
                   "--steps", str(args.steps), "--threads", str(args.threads), "--channels", str(args.channels),
                   "--layers", str(args.layers), "--length", str(args.length), "--what", args.what]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
            results[which] = json.loads(out.strip().splitlines()[-1])

    ref = results["enformer-pytorch"]
    what = ("forward+backward, training mode" if args.what == "train" else
            "inference, eval mode under torch.no_grad()")
    print(f"Enformer {what}, CPU, {args.threads} threads, batch 1, channels {args.channels}, "
          f"{args.layers} layers, {args.length:,} bp, median of {args.steps} steps after one (first s: that one, "
          "which compiles for the compiled model)" + ("; glibc keeps freed memory (--keep-freed-memory)"
                                                      if args.keep_freed_memory else ""))
    print(f"| {'model':<23} | {'seconds':>8} | {'first s':>8} | {'peak MiB':>9} | {'time ratio':>10} | "
          f"{'memory ratio':>12} | {'faults':>9} |")
    print(f"|{'-' * 25}|{'-' * 10}|{'-' * 10}|{'-' * 11}|{'-' * 12}|{'-' * 14}|{'-' * 11}|")
    for which, r in results.items():
        print(f"| {which:<23} | {r['seconds']:>8.2f} | {r['first_seconds']:>8.1f} | {r['peak_bytes'] / 2**20:>9.0f} | "
              f"{r['seconds'] / ref['seconds']:>10.2f} | {r['peak_bytes'] / ref['peak_bytes']:>12.2f} | "
              f"{r['faults']:>9,} |")


if __name__ == "__main__":
    main()
