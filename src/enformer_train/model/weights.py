"""The project's weights format: safetensors with the config beside the tensors. save_model and
load_model write and read a whole model; load_weights starts a model from another's tensors.

Imports of foreign formats (Sonnet, enformer-pytorch) live in convert.py.
"""
from __future__ import annotations

import json
import os

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from ..errors import UserError
from ..files import atomic_write
from .config import EnformerConfig
from .convert import is_enformer_pytorch_folder, load_enformer_pytorch_folder
from .enformer import Enformer, build_model

_CONFIG_KEY = "enformer_train.config"
_FORMAT_KEY = "enformer_train.format"
_FORMAT = "enformer-train-weights/1"


def save_model(model: Enformer, path: str | os.PathLike) -> None:
    """Write the model's weights, moving averages and config as one safetensors file."""

    model = getattr(model, "module", model)  # unwrap DDP
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {_CONFIG_KEY: json.dumps(model.config.to_dict()), _FORMAT_KEY: _FORMAT}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def read_config(path: str | os.PathLike) -> dict:
    """The model config saved in the project's weights file at `path`, as a dict (no tensor read)."""

    path = str(path)
    if not os.path.exists(path):
        raise UserError(f"{path}: no such weights file")
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable safetensors file ({e})") from None
    if meta.get(_FORMAT_KEY) != _FORMAT or _CONFIG_KEY not in meta:
        raise UserError(f"{path}: safetensors file without an enformer-train config; "
                        "import foreign weights with `enformer-train convert` first")
    return json.loads(meta[_CONFIG_KEY])


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu", **overrides) -> Enformer:
    """Build the model saved at `path` (config from the file, `overrides` on top) and load its weights.
    An enformer-pytorch / Hugging Face model folder (config.json + pytorch_model.bin or
    model.safetensors) is converted in memory."""


    if is_enformer_pytorch_folder(path):
        model = load_enformer_pytorch_folder(path)
        if overrides:
            config = EnformerConfig.from_dict({**model.config.to_dict(), **overrides}, source=str(path))
            with torch.device("meta"):
                rebuilt = build_model(config)
            rebuilt.load_state_dict(model.state_dict(), strict=True, assign=True)
            model = rebuilt
        return model.to(device)
    path = str(path)
    saved = read_config(path)
    try:
        tensors = load_file(path, device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable safetensors file ({e})") from None
    config = EnformerConfig.from_dict({**saved, **overrides}, source=path)
    with torch.device("meta"):
        model = build_model(config)
    _check_complete(model, tensors, path)
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.to(device)


def _check_complete(model: Enformer, tensors: dict[str, torch.Tensor], source: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    extra = [k for k in tensors if k not in expected]
    if missing:
        raise UserError(f"{source}: missing tensor {missing[0]}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    if extra:
        raise UserError(f"{source}: unexpected tensor {extra[0]}" + (f" and {len(extra) - 1} more" if len(extra) > 1 else ""))
    for k, v in expected.items():
        if tuple(tensors[k].shape) != tuple(v.shape):
            raise UserError(f"{source}: tensor {k} has shape {tuple(tensors[k].shape)}, the model needs {tuple(v.shape)}")


def load_weights(model: torch.nn.Module, source: dict[str, torch.Tensor],
                 where: str = "weights") -> dict[str, list[str]]:
    """Copy into `model` the tensors of `source` (a state dict) whose names and shapes match.

    This is the non-strict load of fine-tuning: the trunk must match exactly (a trunk tensor that
    is missing or of another shape is a UserError naming it and both shapes), while a head may be
    new or sized otherwise. Returns {'loaded', 'fresh', 'dropped'}: the tensors copied, the model's
    tensors left as initialised (a new or resized head), and the source's tensors nothing took.
    """
    model = getattr(model, "module", model)  # unwrap DDP
    state = model.state_dict()
    loaded, fresh = [], []
    for name, target in state.items():
        t = source.get(name)
        same = t is not None and tuple(t.shape) == tuple(target.shape)
        if not same and not name.startswith("heads."):
            if t is None:
                raise UserError(f"{where}: no tensor {name}; the trunks differ, so these weights cannot "
                                "start this model")
            raise UserError(f"{where}: tensor {name} has shape {tuple(t.shape)}, the model needs "
                            f"{tuple(target.shape)}; set the model section to the source's trunk")
        (loaded if same else fresh).append(name)
    with torch.no_grad():  # copied only once all is checked: an error leaves the model untouched
        for name in loaded:
            state[name].copy_(source[name].to(state[name].dtype))
    dropped = [name for name in source if name not in state or name in fresh]
    return {"loaded": loaded, "fresh": fresh, "dropped": dropped}

