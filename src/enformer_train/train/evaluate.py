"""Distributed evaluation: every sample of a split once over all ranks, float64 sums all-reduced,
per-track Pearson R, R^2 and Poisson loss; optionally averaged over reverse complement and shifts."""
from __future__ import annotations

import contextlib
import csv
import json
import os
from pathlib import Path

import torch

from ..data.loader import Loader, to_device
from ..data.store import Store
from ..data.targets import read_targets
from ..errors import UserError
from ..infer import load, to_forward_strand, tta_views
from .metrics import TrackStats


def cage_tracks(store: Store) -> list[int]:
    """Indices of the tracks whose targets.txt description starts with CAGE."""
    path = os.path.join(store.path, "targets.txt")
    if not os.path.exists(path):
        return []
    return [i for i, row in enumerate(read_targets(path)) if row.get("description", "").upper().startswith("CAGE")]


@torch.no_grad()
def evaluate_store(model, store: Store, organism: str, world, batch_size: int, *, max_batches: int | None = None,
                   tta: bool = False, num_workers: int = 0, seed: int = 0, autocast: bool = False,
                   context: int | None = None) -> TrackStats:
    """Sums over the split (this rank's share, then all-reduced). With `tta`, predictions are the mean
    over (shift -1, 0, 1) x (forward, reverse complement), each mapped back to the forward strand."""
    was_training = model.training
    model.eval()
    views = tta_views(tta, store.max_shift)
    loaders = [Loader(store, batch_size, train=False, seed=seed, rank=world.rank, world_size=world.world_size,
                      num_workers=num_workers, augment=v, context=context) for v in views]
    pair = torch.as_tensor(store.strand_pair, device=world.device)
    stats = TrackStats(store.num_targets, world.device)
    amp = torch.autocast(world.device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    for i, batches in enumerate(zip(*loaders)):
        if max_batches is not None and i >= max_batches:
            break
        total = None
        for view, batch in zip(views, batches):
            batch = to_device(batch, world.device)
            with amp:
                pred = model(batch["sequence"], head=organism).float()
            pred = to_forward_strand(pred, view.reverse, pair)
            total = pred if total is None else total + pred
        target = to_device(batches[0], world.device)["target"]
        stats.update(total / len(views), target)
    model.train(was_training)
    return stats.all_reduce()


def write_results(out_dir: str | Path, results: dict[str, tuple[TrackStats, list[int]]], meta: dict) -> dict:
    """tracks-<organism>.csv (per-track metrics) and summary.json into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {**meta, "organisms": {}}
    for organism, (stats, cage) in results.items():
        per_track = stats.per_track()
        with (out / f"tracks-{organism}.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["track", "pearson_r", "r2", "poisson_loss"])
            for i in range(per_track["pearson_r"].numel()):
                w.writerow([i, f"{per_track['pearson_r'][i].item():.6f}", f"{per_track['r2'][i].item():.6f}",
                            f"{per_track['poisson_loss'][i].item():.6f}"])
        summary["organisms"][organism] = stats.summary(cage)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def run_evaluate(checkpoint: str, split: str, out_dir: str, tta: bool = False, batch_size: int | None = None,
                 max_batches: int | None = None, device: str = "auto") -> dict | None:
    """`enformer-train evaluate`: a checkpoint (or run folder) on a split of every organism it was trained on.
    Under torchrun the split is shared across ranks; rank 0 writes the files."""
    from .distributed import setup, teardown

    world = setup(device)
    try:
        loaded = load(checkpoint, world.device)
        if loaded.config is None:
            raise UserError(f"{checkpoint}: a weights file names no stores; evaluate a training checkpoint or run folder")
        model, config = loaded.model, loaded.config
        autocast = config.train.bf16_autocast(world.device.type)
        results = {}
        for organism, path in config.data.stores.items():
            store = Store(path, split)
            stats = evaluate_store(model, store, organism, world,
                                   batch_size or config.train.eval_batch_per_rank or config.train.batch_per_rank
                                   or max(1, config.train.batch_size // world.world_size),
                                   max_batches=max_batches, tta=tta, num_workers=config.data.num_workers,
                                   autocast=autocast, context=config.model.sequence_length)
            results[organism] = (stats, cage_tracks(store))
        if world.is_main:
            return write_results(out_dir, results, {"checkpoint": loaded.path, "step": loaded.step, "split": split,
                                                    "tta": tta, "ranks": world.world_size})
        return None
    finally:
        teardown()
