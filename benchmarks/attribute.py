"""Time and memory of contribution scores (`enformer-train attribute`) against what they are built from.

At one width, batch and input length, on random weights and sequence (CPU, float32):
- a training step's forward+backward (train mode, Poisson loss on every head) against one
  input-grad map (eval mode, the gradient of a target with respect to the one-hot input);
- one map against the same map with the model's weights left in autograd (as before `weights_frozen`);
- one map against `--per-track` maps of K tracks: one forward, then a backward per track through its
  graph (the default), or the K cotangents `--batched` at a time in one batched backward
  (`--maps-per-backward`, torch.func's vmap);
- ISM forwards/s (mutated windows in batches of --batch) against `predict`'s windows/s at the
  same batch (predict_codes on as many windows), and ISM as the command runs it, recomputing
  only the tower positions a mutation reaches, against the whole windows;
- ISM's peak memory (RSS, a fresh process each) over spans of two lengths: flat when the
  mutated windows are made a batch at a time.

    python benchmarks/attribute.py                       # the demo's model (configs/tiny.yaml)
    python benchmarks/attribute.py --config configs/enformer.yaml --channels 384 --repeats 2 --ism-spans 2,8   # quarter width
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def _model(args):
    """The model of --config (a config YAML's model section; default the demo's tiny.yaml), with
    --channels, --layers, --length, --target when given (their derived sizes follow), one head."""
    import dataclasses
    from pathlib import Path

    import torch

    from enformer_train import Enformer
    from enformer_train.config import load_model_config

    config = load_model_config(args.config or str(Path(__file__).parents[1] / "configs" / "tiny.yaml"))
    changes = {k: v for k, v in (("channels", args.channels), ("num_transformer_layers", args.layers),
                                 ("sequence_length", args.length), ("target_length", args.target)) if v}
    if "channels" in changes:
        changes.update(value_size=None, num_relative_position_features=None)
    config = dataclasses.replace(config, **changes, heads={"human": args.tracks})
    torch.manual_seed(0)
    return Enformer(config)


def _timed(*fns, repeats: int) -> list[float]:
    """Median seconds of each function over `repeats` rounds, the functions taking turns within a
    round so that a machine's drift (other jobs, clocks) falls on all of them alike."""
    for fn in fns:
        fn()  # warm-up: allocators, caches
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, kept in zip(fns, times):
            start = time.perf_counter()
            fn()
            kept.append(time.perf_counter() - start)
    return [statistics.median(kept) for kept in times]


def _ism_peak(args, span: int) -> int:
    """Peak RSS (bytes) of a fresh process that builds the model and runs ISM over `span` positions."""
    code = (f"import sys, resource, json, numpy as np, torch; sys.argv = {sys.argv[:1]!r} + {_child_args(args)!r}; "
            f"sys.path.insert(0, {sys.path[0]!r}); import attribute as b; "
            f"a = b.parse(); torch.set_num_threads(a.threads); m = b._model(a).eval(); "
            f"from enformer_train.attribute import Target, ism; "
            f"n = m.config.sequence_length; codes = np.random.default_rng(0).integers(0, 4, n).astype(np.uint8); "
            f"t = Target([m.config.target_length // 2], [0]); c = n // 2; "
            f"ism(m, codes, (c - {span} // 2, c - {span} // 2 + {span}), 'human', t, batch_size=a.batch); "
            f"print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def _child_args(args) -> list[str]:
    values = {"--config": args.config, "--channels": args.channels, "--layers": args.layers, "--length": args.length,
              "--target": args.target, "--tracks": args.tracks, "--batch": args.batch, "--threads": args.threads}
    return [f"{k}={v}" for k, v in values.items() if v is not None]


def parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", help="config YAML whose model: section is measured (default configs/tiny.yaml)")
    p.add_argument("--channels", type=int)
    p.add_argument("--layers", type=int)
    p.add_argument("--length", type=int, help="input bp")
    p.add_argument("--target", type=int, help="output bins")
    p.add_argument("--tracks", type=int, default=16)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--k", type=int, default=10, help="tracks of the --per-track comparison")
    p.add_argument("--batched", type=int, help="maps per batched backward in the --per-track comparison (default K)")
    p.add_argument("--ism-spans", default="32,128", help="two ISM span lengths for the memory comparison")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--parts", default="maps,ism,memory",
                   help="rows to measure: maps (input-grad), ism (forwards/s), memory (ISM's peak RSS)")
    return p.parse_args()


def main() -> None:
    args = parse()
    import numpy as np
    import torch

    from enformer_train.attribute import Target, _target_of, input_grad, ism
    from enformer_train.infer import predict_codes
    from enformer_train.model.enformer import one_hot
    from enformer_train.train.loss import poisson_loss

    torch.set_num_threads(args.threads)
    model = _model(args)
    rng = np.random.default_rng(0)
    length, bins = model.config.sequence_length, model.config.target_length
    codes = torch.from_numpy(rng.integers(0, 4, (args.batch, length)).astype(np.uint8))
    target = torch.rand(args.batch, bins, args.tracks)

    def training_step():
        model.train()
        loss = poisson_loss(model(codes, head="human"), target)
        loss.backward()
        model.zero_grad(set_to_none=True)

    centre = [bins // 2 - 1, bins // 2, bins // 2 + 1]
    parts = set(args.parts.split(","))
    c = model.config
    print(f"channels {c.channels}, {c.num_transformer_layers} transformer layers, {length:,} bp, {args.tracks} tracks, "
          f"batch {args.batch}, {args.threads} threads, median of {args.repeats}")
    print("| what | time | against | ratio |")
    print("|---|---|---|---|")
    if "maps" in parts:
        one_map = lambda: input_grad(model.eval(), codes, "human", Target(centre, [0]))

        def map_weights_in_autograd():  # input_grad before the weights were held out of autograd
            x = one_hot(codes, torch.float32).requires_grad_(True)
            torch.autograd.grad(_target_of(model.eval(), x, "human", Target(centre, [0]), False, None, False).sum(), x)

        tracks = Target(centre, list(range(args.k)), per_track=True)
        batched = args.batched or args.k
        looped_maps = lambda: input_grad(model, codes, "human", tracks)
        batched_maps = lambda: input_grad(model, codes, "human", tracks, maps_per_backward=batched)
        train_s, map_s, before_s = _timed(training_step, one_map, map_weights_in_autograd, repeats=args.repeats)
        model.eval()
        k_s, batched_s = _timed(looped_maps, batched_maps, repeats=max(1, args.repeats // 2))
        print(f"| input-grad, one map | {map_s * 1e3:.1f} ms | training step fwd+bwd {train_s * 1e3:.1f} ms | "
              f"{map_s / train_s:.2f}x |")
        print(f"| input-grad, one map | {map_s * 1e3:.1f} ms | weights in autograd {before_s * 1e3:.1f} ms | "
              f"{map_s / before_s:.2f}x |")
        print(f"| input-grad, --per-track K={args.k}, a backward per track | {k_s * 1e3:.1f} ms | "
              f"one map {map_s * 1e3:.1f} ms | {k_s / map_s:.2f}x |")
        print(f"| input-grad, --per-track K={args.k}, {batched} maps per backward | {batched_s * 1e3:.1f} ms | "
              f"a backward per track {k_s * 1e3:.1f} ms | {batched_s / k_s:.2f}x |")
    if "ism" in parts:
        model.eval()
        window = codes[0].numpy()
        windows = np.repeat(window[None], args.batch * 4, axis=0)
        span = (length // 2, length // 2 + (args.batch * 4 + 2) // 3)  # about as many forwards
        predict_s, ism_s, spliced_s = _timed(
            lambda: [predict_codes(model, windows[i:i + args.batch], "human") for i in range(0, len(windows), args.batch)],
            lambda: ism(model, window, span, "human", Target(centre, [0]), batch_size=args.batch, whole=True),
            lambda: ism(model, window, span, "human", Target(centre, [0]), batch_size=args.batch),
            repeats=args.repeats)
        predict_rate = len(windows) / predict_s
        ism_rate = (3 * (span[1] - span[0]) + 1) / ism_s  # the mutations and the reference window
        spliced_rate = (3 * (span[1] - span[0]) + 1) / spliced_s
        print(f"| ISM forwards, whole windows | {ism_rate:.3g} windows/s | predict {predict_rate:.3g} windows/s | "
              f"{ism_rate / predict_rate:.2f}x |")
        print(f"| ISM, the tower spliced | {spliced_rate:.3g} mutations/s | whole windows {ism_rate:.3g} windows/s | "
              f"{spliced_rate / ism_rate:.2f}x |")
    if "memory" in parts:
        small, large = (int(s) for s in args.ism_spans.split(","))
        peaks = {s: _ism_peak(args, s) for s in (small, large)}
        print(f"| ISM peak RSS, span {large} | {peaks[large] / 2**20:.0f} MiB | span {small}: "
              f"{peaks[small] / 2**20:.0f} MiB | {peaks[large] / peaks[small]:.2f}x |")

if __name__ == "__main__":
    main()
