"""PNG figures: training curves of a run, and measured against predicted tracks of regions."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .train.logging import read_metrics


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no screen
    import matplotlib.pyplot as plt

    return plt


def plot_training(run_dir: str | Path, out: str | Path) -> Path:
    """Training loss per organism and validation Pearson R per organism against step."""
    plt = _pyplot()
    metrics = read_metrics(run_dir)
    fig, (ax_loss, ax_r) = plt.subplots(1, 2, figsize=(11, 4))
    organisms = sorted({k.split("/")[1] for m in metrics for k in m if k.startswith("loss/")})
    for organism in organisms:
        pts = [(m["step"], m[f"loss/{organism}"]) for m in metrics if f"loss/{organism}" in m]
        ax_loss.plot(*zip(*pts), label=organism)
        pts = [(m["step"], m[f"valid/{organism}/pearson_r"]) for m in metrics if f"valid/{organism}/pearson_r" in m]
        if pts:
            ax_r.plot(*zip(*pts), marker="o", label=organism)
    ax_loss.set(xlabel="step", ylabel="Poisson loss (training batches)", title="Training loss")
    ax_r.set(xlabel="step", ylabel="mean Pearson R over tracks", title="Validation Pearson R", ylim=(-0.1, 1.0))
    for ax in (ax_loss, ax_r):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)


def plot_tracks(measured: np.ndarray | None, predicted: np.ndarray, names: list[str], title: str,
                out: str | Path, start: int = 0, bin_size: int = 128) -> Path:
    """For each track: the measured signal above the predicted one. measured/predicted: [bins, tracks]."""
    plt = _pyplot()
    rows = predicted.shape[1] * (2 if measured is not None else 1)
    fig, axes = plt.subplots(rows, 1, figsize=(10, 1.3 * rows + 0.6), sharex=True, squeeze=False)
    x = start + bin_size * np.arange(predicted.shape[0])
    row = 0
    for t, name in enumerate(names):
        if measured is not None:
            axes[row, 0].fill_between(x, measured[:, t], step="post", color="tab:gray")
            axes[row, 0].set_ylabel("measured", fontsize=7)
            axes[row, 0].set_title(name, fontsize=8, loc="left")
            row += 1
        axes[row, 0].fill_between(x, predicted[:, t], step="post", color="tab:blue")
        axes[row, 0].set_ylabel("predicted", fontsize=7)
        if measured is None:
            axes[row, 0].set_title(name, fontsize=8, loc="left")
        row += 1
    axes[-1, 0].set_xlabel("position (bp)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)
