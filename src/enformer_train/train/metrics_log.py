"""What rank 0 shows and keeps: metrics.jsonl in the run folder, TensorBoard where installed,
Weights & Biases when configured."""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path


class MetricsLog:
    """Appends {'step': k, name: value, ...} lines to run_dir/metrics.jsonl (rank 0 only)."""

    def __init__(self, run_dir: str | Path, enabled: bool, resume_step: int | None, tensorboard: bool = True,
                 wandb_project: str | None = None, config: dict | None = None):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._tb = self._wandb = None
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            # Lines logged after the checkpoint will be logged again by the resumed run, and the
            # stopped run's end record is not part of the run's history: every step appears once.
            lines = [(line, json.loads(line)) for line in _lines(self.path, say=True) if line.strip()]
            kept = [line for line, record in lines if record.get("step", 0) <= resume_step and "end" not in record]
            self.path.write_text("".join(line + "\n" for line in kept))
        elif resume_step is None:
            self.path.write_text("")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # optional: train.tensorboard

                self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            except ImportError:
                pass
        if wandb_project:
            import wandb  # optional: train.wandb_project

            self._wandb = wandb.init(project=wandb_project, dir=str(run_dir), config=config, resume="allow")

    def log(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        # Standard JSON: a non-finite value (a window whose every step was skipped) is null, not NaN.
        record = {"step": step, **{k: None if isinstance(v, float) and not math.isfinite(v) else v
                                   for k, v in values.items()}}
        _append(self.path, (json.dumps(record, allow_nan=False) + "\n").encode())
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                if self._tb is not None:
                    self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(values, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _lines(path: Path, say: bool = False) -> list[str]:
    """The lines of metrics.jsonl; a last line cut short (the disk filled mid-line, a crash) is
    dropped, and said when `say`."""
    lines = path.read_text().splitlines()
    if lines and lines[-1].strip():
        try:
            json.loads(lines[-1])
        except json.JSONDecodeError:
            if say:
                print(f"enformer-train: {path}: dropped its last line, cut short ({lines[-1][:60]!r})",
                      file=sys.stderr, flush=True)
            lines = lines[:-1]
    return lines


def _append(path: Path, data: bytes) -> None:
    """Append one record whole or not at all: a write cut short (no space left) is undone, said in
    one line, and the run goes on (its checkpoints say whether it can)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        try:
            done = 0
            while done < len(data):
                done += os.write(fd, data[done:])
        except OSError as e:
            os.ftruncate(fd, size)
            print(f"enformer-train: {path}: record not logged ({e.strerror or e})", file=sys.stderr, flush=True)
    finally:
        os.close(fd)


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in _lines(path) if line.strip()] if path.exists() else []
