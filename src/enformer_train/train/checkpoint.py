"""Training checkpoints: the whole state in one file, written atomically, the last K kept.

A checkpoint holds the model, optimizer, step, loader positions, every rank's RNG states and the
config. It is loaded with weights_only=True; a torn or foreign file is refused, never half loaded.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import UserError
from ..files import atomic_write

FORMAT = "enformer-train-checkpoint/1"
_NAME = re.compile(r"^step-(\d{8})\.pt$")
_REQUIRED = ("format", "step", "model", "optimizer", "loaders", "rng", "config")


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:08d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if _NAME.match(p.name)), key=lambda p: p.name)


def save_checkpoint(run_dir: str | Path, state: dict, keep: int) -> Path:
    path = checkpoint_path(run_dir, state["step"])
    atomic_write(path, lambda tmp: torch.save({"format": FORMAT, **state}, tmp))
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if path.is_dir():  # a run folder: its latest checkpoint
        found = list_checkpoints(path)
        if not found:
            raise UserError(f"{path}: no checkpoints (checkpoints/step-*.pt) in this run folder")
        path = found[-1]
    if not path.exists():
        raise UserError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncation and foreign pickles raise many types
        raise UserError(f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                        "it may be torn by a crash: delete it to resume from the one before") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path}: not an enformer-train checkpoint (format {state.get('format') if isinstance(state, dict) else None!r})")
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise UserError(f"{path}: checkpoint lacks {', '.join(missing)}")
    state["path"] = str(path)
    return state


def rng_state(device: torch.device) -> dict:
    import random

    import numpy as np

    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
             "python_version": random.getstate()[0], "python_gauss": random.getstate()[2],
             "numpy": torch.from_numpy(np_state[1].astype("int64")), "numpy_pos": int(np_state[2])}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype("uint32"), state["numpy_pos"], 0, 0.0))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
