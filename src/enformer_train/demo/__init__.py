"""`enformer-train demo`: the whole system on a laptop, in minutes.

Writes the synthetic barnyard (the upstream formats: FASTA, sequences.bed, ZLIB TFRecords,
statistics.json, targets.txt), prepares its stores with the same `prepare` as the real data, trains
the tiny Enformer of configs/tiny.yaml on human and mouse in `nproc` processes under torchrun
(cross-replica batch norm, augmentation, distributed validation), and draws the results.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import numpy as np

from ..data.augment import window_margin
from ..data.formats.targets import read_targets
from ..data.producers.prepare import prepare
from ..data.store import Store, targets_path
from ..errors import UserError
from ..infer import predict_codes
from ..plots import plot_tracks, plot_training
from ..saved import load
from ..saved.checkpoint import run_reached
from ..train.metrics_log import read_metrics
from .synthetic import BarnyardConfig, write_barnyard

ORGANISMS = ("human", "mouse")


def packaged_config(name: str) -> str:
    return str(resources.files("enformer_train") / "configs" / name)


def _train_command(nproc: int, config: str, overrides: list[str]) -> list[str]:
    train = ["-m", "enformer_train", "train", "--config", config, *overrides]
    if nproc == 1:
        return [sys.executable, *train]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *train]


def region_figures(run_dir: Path, stores: dict[str, Path], out_dir: Path, samples: int = 3, tracks: int = 4) -> list[Path]:
    """For the first validation regions of each organism: measured above predicted tracks."""
    model = load(run_dir / "model.safetensors").model
    written = []
    for organism, path in stores.items():
        store = Store(str(path), "valid")
        rows = read_targets(targets_path(path))
        margin = window_margin(store.window, model.config.sequence_length)
        for i in range(min(samples, len(store))):
            codes = store.read_sequence(i)[margin:store.window - margin]
            predicted = predict_codes(model, codes[None], organism)[0].numpy()
            measured = store.read_target(i).astype(np.float32)
            chrom, start, end, _ = store.regions()[i]
            span = model.config.target_length * model.config.bin_size
            first = start + margin + (model.config.sequence_length - span) // 2  # the output span's start
            names = [f"track {t}: {rows[t].get('description', '')}" for t in range(min(tracks, store.num_targets))]
            out = out_dir / f"tracks-{organism}-valid{i}.png"
            plot_tracks(measured[:, :len(names)], predicted[:, :len(names)], names,
                        f"{organism} validation region {i}: {chrom}:{first:,}-{first + span:,}",
                        out, start=first, bin_size=model.config.bin_size, chrom=chrom)
            written.append(out)
    return written


def fresh_run_dir(root: Path) -> Path:
    """root/run, or when an earlier demo's run is there, root/run-2, run-3, ...: a rerun never
    writes over a finished run."""
    run_dir, k = root / "run", 1
    while run_reached(run_dir) is not None:
        k += 1
        run_dir = root / f"run-{k}"
    return run_dir


def run_demo(out: str = "enformer-demo", steps: int | None = None, nproc: int = 2, device: str = "cpu",
             seed: int | None = None) -> dict:

    root = Path(out).resolve()
    barnyard, run_dir = root / "barnyard", fresh_run_dir(root)
    stores = {o: root / "stores" / o for o in ORGANISMS}
    started = time.time()
    if not (barnyard / "barnyard.json").exists():
        print(f"writing the synthetic barnyard to {barnyard}")
        write_barnyard(str(barnyard), BarnyardConfig.demo())
    sequence_length = 6144
    for organism, store in stores.items():
        print(f"preparing the {organism} store {store}")
        prepare(str(store), organism, str(barnyard / f"{organism}.fa"), str(barnyard / organism),
                sequence_length=sequence_length, max_shift=3, workers=min(2, os.cpu_count() or 1), progress=False)
    overrides = [f"data.stores.{o}={p}" for o, p in stores.items()]
    overrides += [f"train.run_dir={run_dir}", f"train.device={device}", "train.eval_at_start=true",
                  f"model.sequence_length={sequence_length}"]
    if seed is not None:
        overrides.append(f"train.seed={seed}")
    if steps is not None:
        overrides += [f"train.steps={steps}", f"train.eval_every={max(1, steps // 4)}",
                      f"train.checkpoint_every={max(1, steps // 4)}", f"train.warmup_steps={max(1, steps // 4)}"]
    command = _train_command(nproc, packaged_config("tiny.yaml"), overrides)
    print(f"training on {nproc} process{'es' if nproc > 1 else ''}: {' '.join(command[1:6])} ...")
    result = subprocess.run(command)
    if result.returncode != 0:
        raise UserError(f"training exited with {result.returncode}; its messages are above; the run folder is {run_dir}")
    figures = [plot_training(run_dir, run_dir / "training.png")]
    figures += region_figures(run_dir, stores, run_dir)
    metrics = read_metrics(run_dir)
    final = {o: [m[f"valid/{o}/pearson_r"] for m in metrics if f"valid/{o}/pearson_r" in m] for o in ORGANISMS}
    print(f"\ndone in {time.time() - started:.0f} s; everything is in {root}")
    print(f"  data:        {barnyard} (synthetic barnyard), {root / 'stores'} (prepared stores)")
    print(f"  run folder:  {run_dir} (config.yaml, metrics.jsonl, checkpoints/, model.safetensors)")
    for organism, values in final.items():
        print(f"  {organism}: mean validation Pearson R {values[-1]:.3f} (untrained {values[0]:.3f})")
    # the paths last, where a user looks once the run is over
    print("figures:")
    for figure in figures:
        print(f"  {figure}")
    print(f"model:\n  {run_dir / 'model.safetensors'}")
    return {"root": root, "run_dir": run_dir, "figures": figures, "pearson_r": final,
            "seconds": time.time() - started}
