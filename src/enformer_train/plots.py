"""PNG figures: training curves of a run, and measured against predicted tracks of regions."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .train.metrics_log import read_metrics


def _pyplot():
    import matplotlib  # seconds to import: only when a figure is drawn

    matplotlib.use("Agg")  # files only, no screen
    import matplotlib.pyplot as plt  # with matplotlib, only when a figure is drawn

    return plt


def plot_training(run_dir: str | Path, out: str | Path) -> Path:
    """training_figure written to `out` (PNG)."""
    plt = _pyplot()
    fig = training_figure(run_dir)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)


def training_figure(run_dir: str | Path):
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
    # The loss is Keras' poisson, mean(pred - y log pred): the log(y!) term of the Poisson negative
    # log-likelihood is a constant of the data and is left out, so the value can be negative.
    ax_loss.set(xlabel="step", ylabel="Poisson loss: mean(pred - y log pred)\n(without the constant log(y!), so it can be < 0)",
                title="Training loss (training batches)")
    ax_r.set(xlabel="step", ylabel="mean Pearson R over tracks", title="Validation Pearson R", ylim=(-0.1, 1.0))
    for ax in (ax_loss, ax_r):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def _steps(start: int, bin_size: int, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bin edges and values for a step="post" plot: the last value repeated at the span's end, so
    the last bin is as wide as the others (not a spike at the right edge)."""
    edges = start + bin_size * np.arange(len(values) + 1)
    return edges, np.append(values, values[-1])


def track_figure(measured: np.ndarray | None, predicted: np.ndarray, names: list[str], title: str,
                 start: int = 0, bin_size: int = 128, chrom: str | None = None,
                 region: tuple[int, int] | None = None):
    """A panel per track: measured (grey, filled) and predicted (blue line) on one y-scale, against
    genome coordinates; `region` (start, end) shaded. measured/predicted: [bins, tracks]."""
    plt = _pyplot()
    rows = predicted.shape[1]
    fig, axes = plt.subplots(rows, 1, figsize=(10, 1.5 * rows + 0.8), sharex=True, squeeze=False)
    end = start + bin_size * predicted.shape[0]
    for t, name in enumerate(names):
        ax = axes[t, 0]
        if region is not None:
            ax.axvspan(max(region[0], start), min(region[1], end), color="tab:orange", alpha=0.15, lw=0,
                       label="requested region")
        if measured is not None:
            ax.fill_between(*_steps(start, bin_size, measured[:, t]), step="post", color="tab:gray", alpha=0.6,
                            lw=0, label="measured")
        ax.step(*_steps(start, bin_size, predicted[:, t]), where="post", color="tab:blue", lw=1, label="predicted")
        ax.set_xlim(start, end)
        ax.set_ylim(bottom=0)
        ax.set_title(name, fontsize=8, loc="left")
        ax.set_ylabel("signal", fontsize=7)
        ax.ticklabel_format(axis="x", style="plain", useOffset=False)
        if t == 0:
            ax.legend(fontsize=7, loc="upper right", frameon=False)
    axes[-1, 0].set_xlabel(f"{chrom} position (bp)" if chrom else "position (bp)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_assay_r(r: np.ndarray, assays: dict[str, list[int]], title: str, out: str | Path) -> Path:
    """Distribution of per-track Pearson R by assay type (a box per type, every track a dot, as the
    paper's figures), with all tracks as the first box. r: [tracks]."""
    plt = _pyplot()
    groups = {"all": list(range(len(r))), **assays}
    values = [r[tracks][~np.isnan(r[tracks])] for tracks in groups.values()]
    fig, ax = plt.subplots(figsize=(1.6 * len(groups) + 2, 4))
    ax.boxplot(values, showfliers=False)
    jitter = np.random.default_rng(0)
    for k, v in enumerate(values, start=1):
        ax.scatter(k + jitter.uniform(-0.15, 0.15, len(v)), v, s=6, alpha=0.5, color="tab:blue")
    ax.set_xticks(range(1, len(groups) + 1),
                  [f"{name}\n{len(v)} tracks\nmean {v.mean():.3f}" if len(v) else name for name, v in zip(groups, values)])
    ax.set(ylabel="Pearson R", title=title, ylim=(min(-0.1, *(v.min() for v in values if len(v))), 1.0))
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)


def plot_tracks(measured: np.ndarray | None, predicted: np.ndarray, names: list[str], title: str,
                out: str | Path, start: int = 0, bin_size: int = 128, chrom: str | None = None,
                region: tuple[int, int] | None = None) -> Path:
    """track_figure written to `out` (PNG)."""
    plt = _pyplot()
    fig = track_figure(measured, predicted, names, title, start, bin_size, chrom, region)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)
