"""`enformer-train evaluate`: a checkpoint's official metric on a split of its stores (or others),
per track (CSV) and summarised (JSON, and a figure of R by assay type); under torchrun too."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

from .compiling import for_inference
from .config import TrainConfig
from .data.store import Store, read_manifest, track_rows
from .distributed import set_where, setup, teardown
from .errors import UserError
from .saved import load
from .plots import plot_assay_r
from .train.metrics import TrackStats
from .train.validation import assay_tracks, evaluate_store


def write_results(out_dir: str | Path, results: dict[str, tuple[TrackStats, dict[str, list[int]], list[dict]]],
                  meta: dict) -> dict:
    """tracks-<organism>.csv (per track: index, identifier, description and metrics), summary.json
    (means overall and per assay type) and evaluate-<organism>.png (per-track R by assay type) into
    out_dir. results: {organism: (stats, {assay type: track indices}, targets.txt rows)}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {**meta, "organisms": {}}
    for organism, (stats, assays, rows) in results.items():
        per_track = stats.per_track()
        with (out / f"tracks-{organism}.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["track", "identifier", "description", "pearson_r", "r2", "poisson_loss"])
            for i in range(per_track["pearson_r"].numel()):
                row = rows[i] if i < len(rows) else {}
                w.writerow([i, row.get("identifier", ""), row.get("description", ""),
                            f"{per_track['pearson_r'][i].item():.6f}", f"{per_track['r2'][i].item():.6f}",
                            f"{per_track['poisson_loss'][i].item():.6f}"])
        summary["organisms"][organism] = stats.summary(assays.get("CAGE"))
        r = per_track["pearson_r"].cpu().numpy()
        summary["organisms"][organism]["pearson_r_by_assay"] = {
            name: float(np.nanmean(r[tracks])) for name, tracks in assays.items()}
        plot_assay_r(r, assays, f"{organism}, {meta.get('split', '')}: Pearson R per track",
                     out / f"evaluate-{organism}.png")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _refuse_nonfinite(results: dict[str, tuple], stores: dict, split: str, out_dir: str) -> None:
    """One line naming the store, split, tracks and counts of any NaN or inf met, predicted or
    measured: their tracks' metrics (written for inspection) are NaN, and so are the means."""
    said = []
    for organism, (stats, *_) in results.items():
        for kind, tracks in stats.nonfinite().items():
            if tracks:
                shown = ", ".join(f"{t} ({n})" for t, n in list(tracks.items())[:5]) + (" ..." if len(tracks) > 5 else "")
                said.append(f"{stores[organism]} {split}: {sum(tracks.values())} non-finite {kind} in tracks {shown}")
    if said:
        raise UserError("; ".join(said) + f"; their metrics and the means over tracks are NaN (written to {out_dir}); "
                        "prepare the store again (prepare refuses non-finite targets)")


def parse_stores(values: list[str] | None) -> dict[str, str]:
    """`--store` values, STORE (the head named by the store's organism) or HEAD=STORE, as {head: store}."""
    stores = {}
    for value in values or []:
        head, sep, path = value.partition("=")
        if not sep or "/" in head or os.path.exists(value):
            head, path = "", value
        if not os.path.isdir(path):
            raise UserError(f"--store {value}: no such store folder (give STORE or HEAD=STORE)")
        head = head or read_manifest(path)["organism"]
        if head in stores:
            raise UserError(f"--store {value}: a second store for head {head!r}; give HEAD=STORE to name another head")
        stores[head] = path
    return stores


def run_evaluate(checkpoint: str, split: str, out_dir: str, tta: bool = False, batch_size: int | None = None,
                 max_batches: int | None = None, device: str = "auto", stores: list[str] | None = None,
                 collective_timeout_s: float = 600.0, compile: bool = False) -> dict | None:
    """`enformer-train evaluate`: a checkpoint (or run folder) on a split of every organism it was
    trained on, or of `stores` (STORE or HEAD=STORE); a model file (.safetensors) needs `stores`.
    Under torchrun the split is shared across ranks; rank 0 writes the files. With `compile`, the
    model runs under torch.compile (compiling.for_inference)."""
    world = setup(device, collective_timeout_s, "evaluate")
    try:
        chosen = parse_stores(stores)
        loaded = load(checkpoint, world.device)
        model, config = loaded.model, loaded.config
        call = for_inference(model) if compile else model
        if config is None and not chosen:
            raise UserError(f"{checkpoint}: a model file names no stores; give --store STORE (its organism picks "
                            f"the head: {', '.join(model.config.heads)}) or --store HEAD=STORE")
        for head in chosen:
            if head not in model.config.heads:
                raise UserError(f"--store {chosen[head]}: the model has no head {head!r} (heads: "
                                f"{', '.join(model.config.heads)}); give HEAD=STORE")
        train = config.train if config else TrainConfig()
        autocast = train.bf16_autocast(world.device.type)
        per_rank = batch_size or train.eval_batch_per_rank or train.batch_per_rank or (
            max(1, train.batch_size // world.world_size) if config else 1)
        results = {}
        for organism, path in (chosen or config.data.stores).items():
            store = Store(path, split)
            set_where(f"{organism} {split}")
            expected = (model.config.target_length, model.config.heads[organism])
            if (store.target_length, store.num_targets) != expected:
                raise UserError(f"{path}: targets [{store.target_length}, {store.num_targets}] but the model's "
                                f"{organism} head gives [{expected[0]}, {expected[1]}]")
            stats = evaluate_store(call, store, organism, world, per_rank,
                                   max_batches=max_batches, tta=tta, num_workers=config.data.num_workers if config else 2,
                                   autocast=autocast, sequence_length=model.config.sequence_length,
                                   show_progress=world.is_main)
            results[organism] = (stats, assay_tracks(store), track_rows(store))
        summary = None
        if world.is_main:
            summary = write_results(out_dir, results, {"checkpoint": loaded.path, "step": loaded.step, "split": split,
                                                       "tta": tta, "ranks": world.world_size})
        _refuse_nonfinite(results, chosen or config.data.stores, split, out_dir)
        return summary
    finally:
        teardown()
