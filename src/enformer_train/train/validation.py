"""Distributed evaluation of a store's split, as training validates and `evaluate` reports: every
sample once over all ranks, float64 sums all-reduced, per-track Pearson R, R^2 and Poisson loss;
optionally averaged over reverse complement and shifts."""
from __future__ import annotations

import contextlib

import torch

from ..data.loader import Loader, to_device
from ..data.store import Store, track_rows
from ..infer import to_forward_strand, tta_views
from ..progress import progress
from .metrics import TrackStats

# Assay types as the paper reports them, by the prefix of targets.txt's description ("CAGE:liver",
# "DNASE:K562", "ATAC:...", "CHIP:H3K27ac:..."); DNase and ATAC are one accessibility group.
ASSAY_PREFIXES = {"CAGE": ("CAGE",), "DNASE/ATAC": ("DNASE", "ATAC"), "CHIP": ("CHIP",)}


def assay_tracks(store: Store) -> dict[str, list[int]]:
    """{assay type: indices of its tracks} by the description's prefix (types without tracks left out)."""
    descriptions = [row.get("description", "").upper() for row in track_rows(store)]
    groups = {name: [i for i, d in enumerate(descriptions) if d.startswith(prefixes)]
              for name, prefixes in ASSAY_PREFIXES.items()}
    return {name: tracks for name, tracks in groups.items() if tracks}


def cage_tracks(store: Store) -> list[int]:
    """Indices of the tracks whose targets.txt description starts with CAGE."""
    return assay_tracks(store).get("CAGE", [])


@torch.no_grad()
def evaluate_store(model, store: Store, organism: str, world, batch_size: int, *, max_batches: int | None = None,
                   tta: bool = False, num_workers: int = 0, seed: int = 0, autocast: bool = False,
                   sequence_length: int | None = None, show_progress: bool = False) -> TrackStats:
    """Sums over the split (this rank's share, then all-reduced). With `tta`, predictions are the mean
    over (shift -1, 0, 1) x (forward, reverse complement), each mapped back to the forward strand.
    With `show_progress`, batches done and an ETA (this rank's; ranks run in step)."""
    was_training = model.training
    model.eval()
    views = tta_views(tta, store.max_shift)
    loaders = [Loader(store, batch_size, train=False, seed=seed, shard=world,
                      num_workers=num_workers, augment=v, sequence_length=sequence_length) for v in views]
    pair = torch.as_tensor(store.strand_pair, device=world.device)
    stats = TrackStats(store.num_targets, world.device)
    amp = torch.autocast(world.device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    total = len(loaders[0]) if max_batches is None else min(max_batches, len(loaders[0]))
    bar = progress(total, f"evaluate {organism}", "batch", enabled=show_progress)
    for i, batches in enumerate(zip(*loaders)):
        if max_batches is not None and i >= max_batches:
            break
        summed = None
        for view, batch in zip(views, batches):
            batch = to_device(batch, world.device)
            with amp:
                pred = model(batch["sequence"], head=organism).float()
            pred = to_forward_strand(pred, view.reverse, pair)
            summed = pred if summed is None else summed + pred
        target = to_device(batches[0], world.device)["target"]
        stats.update(summed / len(views), target)
        bar.update(1)
    bar.close()
    model.train(was_training)
    return stats.all_reduce()
