"""Training checkpoints: the whole state in one file, written atomically, the last K kept.

A checkpoint holds the model, optimizer, step, loader positions, every rank's RNG states and the
config, and a checksum of all of it that every load verifies (a file damaged on disk is refused,
never trained on). It is loaded with weights_only=True; a torn or foreign file is refused, never
half loaded. The newest good checkpoint is never deleted by the rotation.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from .. import files
from ..errors import UserError
from ..files import torch_file_problem

FORMAT = "enformer-train-checkpoint/1"
_NAME = re.compile(r"^step-(\d{8})\.pt$")
_NAMES = r"step-\d{8}\.pt"  # for the temporary files of atomic_write
_REQUIRED = ("format", "step", "model", "optimizer", "loaders", "rng", "config")
_BEFORE = "resume from the one before (delete this one)"


class BadCheckpoint(UserError):
    """A checkpoint file that cannot be used: unreadable, damaged (checksum), or not a checkpoint.
    `problem` says what is wrong with `path`; the message adds what to do about it."""

    def __init__(self, path: Path, problem: str, advice: str = ""):
        super().__init__(f"{path}: {problem}" + (f"; {advice}" if advice else ""))
        self.path, self.problem = path, problem


class CheckpointNotSaved(UserError):
    """A checkpoint that could not be written (disk full) or did not verify; nothing was deleted."""


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:08d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if _NAME.match(p.name)), key=lambda p: p.name)


def remove_stale_temporaries(run_dir: str | Path) -> list[Path]:
    """The half-written checkpoints a killed save left (only atomic_write's temporaries of step-*.pt)."""
    return files.remove_temporaries(Path(run_dir) / "checkpoints", _NAMES)


# -- the checksum: over the contents (tensors' bytes, every value), not the file's bytes --------

def _digest(value, h) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().to("cpu").contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    elif isinstance(value, dict):
        h.update(f"D{len(value)};".encode())
        for k, v in sorted(value.items(), key=lambda kv: repr(kv[0])):
            _digest(k, h)
            _digest(v, h)
    elif isinstance(value, (list, tuple)):  # a tuple may come back as a list, or the other way
        h.update(f"L{len(value)};".encode())
        for v in value:
            _digest(v, h)
    else:
        h.update(f"{type(value).__name__}:{value!r};".encode())


def checksum(state: dict) -> str:
    """sha256 of a checkpoint's contents (all but 'checksum' and 'path'), as hex."""
    h = hashlib.sha256()
    _digest({k: v for k, v in state.items() if k not in ("checksum", "path")}, h)
    return h.hexdigest()


def is_good(state: dict) -> bool:
    """A checkpoint saved in a healthy state (not by a stop for non-finite losses)."""
    return not state.get("nonfinite_run", 0)


# -- saving ------------------------------------------------------------------------------------

def estimated_size(state: dict) -> int:
    """Bytes a checkpoint of `state` takes on disk, about: its tensors plus room for the rest."""
    total = 0

    def walk(value):
        nonlocal total
        if isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)

    walk(state)
    return int(total * 1.01) + (1 << 20)


def run_reached(run_dir: str | Path) -> int | None:
    """The step that the run in `run_dir` reached (its latest checkpoint or logged step), or None
    when the folder holds no run (no checkpoints, no model.safetensors, no metrics logged)."""
    run_dir = Path(run_dir)
    steps = [int(_NAME.match(p.name).group(1)) for p in list_checkpoints(run_dir)]
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            try:
                steps.append(int(json.loads(line).get("step", 0)))
            except (ValueError, AttributeError, TypeError):
                steps.append(0)  # a torn last line is still a run
    if not steps and (run_dir / "model.safetensors").exists():
        steps.append(0)
    return max(steps) if steps else None


def refuse_existing_run(run_dir: str | Path) -> None:
    """A fresh run must not write over another: its metrics.jsonl would be truncated, its
    model.safetensors replaced and its newer checkpoints left to mix with the new run's."""
    step = run_reached(run_dir)
    if step is not None:
        raise UserError(f"{run_dir}: holds a run to step {step}: --resume to continue, or another train.run_dir")


def save_checkpoint(run_dir: str | Path, state: dict, keep: int) -> Path:
    """Write `state` with its checksum, verify the file on disk, then rotate: keep the last `keep`
    checkpoints and, always, the newest good one. A checkpoint that does not fit the free space,
    runs out of it, or does not verify is a CheckpointNotSaved and deletes nothing."""
    path = checkpoint_path(run_dir, state["step"])
    path.parent.mkdir(parents=True, exist_ok=True)
    full = {"format": FORMAT, **state}
    full["checksum"] = checksum(full)
    needed, free = estimated_size(full), shutil.disk_usage(path.parent).free
    if needed > free:
        raise CheckpointNotSaved(f"{path.parent}: no room for checkpoint {path.name}: needs about {needed} bytes, "
                                 f"{free} free")
    try:
        files.atomic_write(path, lambda tmp: torch.save(full, tmp))
    except files.DiskFullError as e:
        raise CheckpointNotSaved(f"{e} (checkpoint {path.name}, about {needed} bytes)") from None
    except RuntimeError as e:  # torch's zip writer reports a full disk as a C++ error
        if "write" not in str(e) or shutil.disk_usage(path.parent).free >= needed:
            raise
        raise CheckpointNotSaved(f"{path.parent}: no space left writing checkpoint {path.name}: needs about "
                                 f"{needed} bytes, {shutil.disk_usage(path.parent).free} free") from None
    try:
        _read(path, mmap=True)  # verified on disk before anything is deleted
    except BadCheckpoint as e:
        path.unlink(missing_ok=True)
        raise CheckpointNotSaved(f"{e}; removed it, the earlier checkpoints are kept") from None
    if keep > 0:
        found = list_checkpoints(run_dir)
        kept = set(found[-keep:]) | {_newest_good(found, path, is_good(state))}
        for old in found:
            if old not in kept:
                old.unlink(missing_ok=True)
    return path


def _newest_good(found: list[Path], new: Path, new_is_good: bool) -> Path | None:
    if new_is_good:
        return new
    for old in reversed(found):
        if old == new:
            continue
        try:
            if is_good(_read(old, mmap=True)):
                return old
        except BadCheckpoint:
            continue
    return None


# -- loading -----------------------------------------------------------------------------------

def _read(path: Path, map_location="cpu", mmap: bool = False) -> dict:
    """The checkpoint at `path`, checked (format, keys, checksum when it has one); BadCheckpoint
    naming the file and the reason otherwise."""
    if path.stat().st_size == 0:
        raise BadCheckpoint(path, "empty file (0 bytes), a save cut short", _BEFORE)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:  # noqa: BLE001 - truncation and foreign pickles raise many types
        raise BadCheckpoint(path, f"not a readable checkpoint: {torch_file_problem(path, e)}",
                            "expected a training checkpoint (checkpoints/step-*.pt of `enformer-train train`), a run "
                            "folder or a model file (.safetensors); one torn by a crash can be deleted to resume "
                            "from the one before") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else None
        raise BadCheckpoint(path, f"not an enformer-train checkpoint (format {found!r})")
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise BadCheckpoint(path, f"checkpoint lacks {', '.join(missing)}")
    if "checksum" in state and checksum(state) != state["checksum"]:  # checkpoints before checksums: none
        raise BadCheckpoint(path, "checksum mismatch, the file was damaged after it was written (disk, copy or "
                                  "transfer)", _BEFORE)
    state["path"] = str(path)
    return state


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if path.is_dir():  # a run folder: its latest checkpoint
        found = list_checkpoints(path)
        if not found:
            raise UserError(f"{path}: no checkpoints (checkpoints/step-*.pt) in this run folder")
        path = found[-1]
    if not path.exists():
        raise UserError(f"{path}: no such checkpoint")
    return _read(path, map_location)


def load_latest_good(run_dir: str | Path, map_location="cpu", warn=None) -> dict:
    """The newest checkpoint of a run folder that reads and verifies; each newer bad one is
    reported in one line through `warn` ("skipped FILE: why; resuming from the one before") and
    skipped (never deleted)."""
    found = list_checkpoints(run_dir)
    if not found:
        raise UserError(f"{run_dir}: no checkpoints (checkpoints/step-*.pt) in this run folder")
    reasons = []
    for path in reversed(found):
        try:
            return _read(path, map_location)
        except BadCheckpoint as e:
            reasons.append(f"{path}: {e.problem}")
            if warn is not None:
                warn(f"skipped {path.name}: {e.problem}; resuming from the one before")
    raise UserError(f"{run_dir}: no usable checkpoint; the newest: {reasons[0]}")


def check_same_model(state: dict, model: torch.nn.Module, model_config: dict) -> None:
    """A UserError in one line when the checkpoint's tensors do not fit `model` (names or shapes),
    naming the model config keys that differ with both values; silent when they fit."""
    saved, expected = state["model"], model.state_dict()
    if set(saved) == set(expected) and all(tuple(saved[k].shape) == tuple(v.shape) for k, v in expected.items()):
        return
    before = (state.get("config") or {}).get("model") or {}
    diffs = [f"model.{k}: checkpoint {before.get(k)}, run {model_config.get(k)}"
             for k in sorted(set(before) | set(model_config), key=str) if before.get(k) != model_config.get(k)]
    if not diffs:  # same config but other tensors: name the first
        name = next((k for k in expected if k not in saved or tuple(saved[k].shape) != tuple(expected[k].shape)),
                    next((k for k in saved if k not in expected), "?"))
        diffs = [f"tensor {name}: checkpoint {tuple(saved[name].shape) if name in saved else 'none'}, run "
                 f"{tuple(expected[name].shape) if name in expected else 'none'}"]
    raise UserError(f"{state['path']}: saved from another model config ({'; '.join(diffs)}); use the "
                    "checkpoint's model section, or another train.run_dir for a new model")


def rng_state(device: torch.device) -> dict:


    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
             "python_version": random.getstate()[0], "python_gauss": random.getstate()[2],
             "numpy": torch.from_numpy(np_state[1].astype("int64")), "numpy_pos": int(np_state[2])}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:


    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype("uint32"), state["numpy_pos"], 0, 0.0))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
