"""What a saved thing is and how to get a model from it, for every command: the project's weights
file (.safetensors, model/weights.py), a training checkpoint or a run folder (its latest good
checkpoint; checkpoint.py is that file format), an enformer-pytorch / Hugging Face model folder and
a Sonnet checkpoint (both converted in memory, model/convert.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import Config, config_from_dict
from ..model import Enformer, build_model
from ..model.convert import import_model, is_enformer_pytorch_folder, is_sonnet_checkpoint
from ..model.lora import add_lora, merge_lora
from ..model.weights import load_model, read_config
from .checkpoint import list_checkpoints, load_checkpoint


@dataclass
class Loaded:
    """A model ready for inference and what its file says about how it was trained."""

    model: Enformer  # in evaluation mode
    path: str  # the file actually read (a run folder's latest checkpoint)
    config: Config | None = None  # the run's config (checkpoints only)
    step: int | None = None  # the training step (checkpoints only)

    @property
    def stores(self) -> dict[str, str]:
        """{head: store folder} the model was trained on (empty for a plain weights file)."""
        return dict(self.config.data.stores) if self.config else {}


def resolve_saved(path: str | Path) -> tuple[str, Path]:
    """What a saved model path is: ('weights', a .safetensors file), ('enformer-pytorch', an
    enformer-pytorch / Hugging Face model folder), ('sonnet', a Sonnet checkpoint prefix or its
    folder) or ('checkpoint', a checkpoint file or a run folder, whose latest checkpoint is meant; a
    run folder without checkpoints but with model.safetensors is that weights file)."""
    path = Path(path)
    if is_enformer_pytorch_folder(path):
        return "enformer-pytorch", path
    if path.suffix == ".safetensors":
        return "weights", path
    if is_sonnet_checkpoint(path):
        return "sonnet", path
    if path.is_dir() and not list_checkpoints(path) and (path / "model.safetensors").exists():
        return "weights", path / "model.safetensors"
    return "checkpoint", path


def load(path: str | Path, device: torch.device | str = "cpu") -> Loaded:
    """A model from any saved form (resolve_saved), in evaluation mode. Raises UserError naming the
    file when it is none of them. A checkpoint of a run with low-rank adapters gives the model with
    the adapters merged."""
    device = torch.device(device)
    kind, file = resolve_saved(path)
    if kind in ("weights", "enformer-pytorch"):
        return Loaded(load_model(file, device=device).eval(), str(file))
    if kind == "sonnet":
        return Loaded(import_model(str(file), fmt="sonnet").to(device).eval(), str(file))
    state = load_checkpoint(file, map_location=device)
    config = config_from_dict(state["config"], where=state["path"])
    model = build_model(config.model).to(device)
    if any(".lora_" in k for k in state["model"]):
        add_lora(model, config.train.lora_rank, list(config.train.lora_targets))
    model.load_state_dict(state["model"])
    return Loaded(merge_lora(model).eval(), state["path"], config, state["step"])


def model_config(path: str | Path) -> dict:
    """The model config stored with a saved model (any form resolve_saved knows), as a dict; only
    what is needed to know it is read where the format allows (a weights file's header)."""
    kind, file = resolve_saved(path)
    if kind == "weights":
        return read_config(file)
    if kind in ("enformer-pytorch", "sonnet"):
        return load(file).model.config.to_dict()
    return dict(load_checkpoint(file)["config"]["model"])


__all__ = ["Loaded", "load", "model_config", "resolve_saved"]
