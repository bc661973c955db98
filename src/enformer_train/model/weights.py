"""Weights in and out: safetensors with the config beside the tensors, and imports of the released
Sonnet checkpoint and of enformer-pytorch state dicts.

An import maps every tensor of the model to exactly one source variable. A missing, extra or
misshapen variable is an error naming it, and nothing is written unless the whole model loads.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import UserError
from ..files import atomic_write
from .config import EnformerConfig
from .enformer import Enformer

_CONFIG_KEY = "enformer_train.config"
_FORMAT_KEY = "enformer_train.format"
_FORMAT = "enformer-train-weights/1"

# An imported moving average with no step counter is treated as long converged, so that further
# training continues it as a plain exponential average (the debiasing factor is then 1).
_CONVERGED_COUNTER = 1_000_000


def save_model(model: Enformer, path: str | os.PathLike) -> None:
    """Write the model's weights, moving averages and config as one safetensors file."""
    from safetensors.torch import save_file

    model = getattr(model, "module", model)  # unwrap DDP
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {_CONFIG_KEY: json.dumps(model.config.to_dict()), _FORMAT_KEY: _FORMAT}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu", **overrides) -> Enformer:
    """Build the model saved at `path` (config from the file, `overrides` on top) and load its weights."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    path = str(path)
    if not os.path.exists(path):
        raise UserError(f"{path}: no such weights file")
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(path, device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable safetensors file ({e})") from None
    if meta.get(_FORMAT_KEY) != _FORMAT or _CONFIG_KEY not in meta:
        raise UserError(f"{path}: safetensors file without an enformer-train config; "
                        "import foreign weights with `enformer-train convert` first")
    config = EnformerConfig.from_dict({**json.loads(meta[_CONFIG_KEY]), **overrides}, source=path)
    with torch.device("meta"):
        model = Enformer(config)
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


# ---------------------------------------------------------------------------------------------
# Imports. Each format gives a name map {our name: (source name, layout)}, built from the config
# inferred from the source's shapes. Layouts: 'same', 'linear' (Sonnet [in, out] -> [out, in]),
# 'conv' (Sonnet [width, in, out] -> [out, in, width]), 'flat' (any shape with the same elements,
# e.g. Sonnet's [1, 1, C] batch-norm parameters), 'pool2d' (a [C, C, 1, 1] 1x1 conv).


def _to_layout(t: torch.Tensor, layout: str, shape: tuple) -> torch.Tensor | None:
    if layout == "linear" and t.ndim == 2:
        t = t.t()
    elif layout == "conv" and t.ndim == 3:
        t = t.permute(2, 1, 0)
    elif layout in ("flat", "pool2d") and t.numel() == int(torch.tensor(shape).prod()):
        t = t.reshape(shape)
    return t.contiguous() if tuple(t.shape) == tuple(shape) else None


def _assemble(config: EnformerConfig, names: dict[str, tuple[str, str]], source: dict[str, torch.Tensor],
              optional: dict[str, str], where: str, ignore: Callable[[str], bool] = lambda k: False) -> Enformer:
    model = Enformer(config)
    state = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    used = set()
    for ours, target in state.items():
        if ours in names:
            theirs, layout = names[ours]
            if theirs not in source:
                raise UserError(f"{where}: missing variable {theirs} (for {ours}); is this a complete Enformer?")
            t = _to_layout(source[theirs].float() if target.is_floating_point() else source[theirs], layout, target.shape)
            if t is None:
                raise UserError(f"{where}: variable {theirs} has shape {tuple(source[theirs].shape)}, "
                                f"expected {tuple(target.shape)} for {ours}")
            out[ours] = t.to(target.dtype)
            used.add(theirs)
        elif ours.endswith("num_batches_tracked"):
            counter = optional.get(ours)
            value = int(source[counter].reshape(-1)[0]) if counter in source else 0
            out[ours] = torch.tensor(value if value > 0 else _CONVERGED_COUNTER, dtype=torch.long)
            used.add(counter)
        else:  # pragma: no cover - a name map that misses a model tensor is a bug here
            raise RuntimeError(f"no source for {ours}")
    extra = sorted(k for k in source if k not in used and not ignore(k))
    if extra:
        raise UserError(f"{where}: unexpected variable {extra[0]}" + (f" and {len(extra) - 1} more" if len(extra) > 1 else "")
                        + "; the checkpoint is not the Enformer this importer knows")
    model.load_state_dict(out, strict=True)
    return model


def _infer_tower(filters: list[int], channels: int, where: str) -> int:
    for div in (128, 64, 32, 16, 8, 4, 2, 1):
        cfg = EnformerConfig(channels=channels, num_conv_tower_blocks=len(filters), tower_divisible_by=div,
                             heads={"x": 1}, num_heads=1, sequence_length=2 ** (len(filters) + 1))
        if cfg.tower_filters == filters:
            return div
    raise UserError(f"{where}: conv tower filters {filters} are not exponentially spaced from {channels // 2} "
                    f"to {channels} with any rounding this model supports")


def _count(prefix_re: str, keys) -> int:
    found = {int(m.group(1)) for k in keys if (m := re.match(prefix_re, k))}
    return max(found) + 1 if found else 0


# -- enformer-pytorch ---------------------------------------------------------------------------

def _normalise_enformer_pytorch(sd: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """Drop a wrapper prefix and fold the `_trunk.N` aliases into the named modules."""
    aliases = {"_trunk.1.": "stem.", "_trunk.2.": "conv_tower.", "_trunk.4.": "transformer.",
               "_trunk.6.": "final_pointwise."}
    if all(k.startswith("enformer.") for k in sd):
        sd = {k[len("enformer."):]: v for k, v in sd.items()}
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        for alias, name in aliases.items():
            if k.startswith(alias):
                k = name + k[len(alias):]
        if k in out and not torch.equal(out[k], v):
            raise UserError(f"{where}: {k} and its _trunk alias hold different values")
        out[k] = v
    return out


def from_enformer_pytorch(sd: dict[str, torch.Tensor], where: str = "state dict", **config_overrides) -> Enformer:
    """An Enformer with the weights of an enformer-pytorch state dict (config inferred from shapes)."""
    sd = _normalise_enformer_pytorch(sd, where)
    keys = list(sd)
    need = ["stem.0.weight", "transformer.0.0.fn.1.rel_content_bias", "transformer.0.0.fn.1.to_q.weight",
            "transformer.0.0.fn.1.to_v.weight", "transformer.0.0.fn.1.to_rel_k.weight"]
    for k in need:
        if k not in sd:
            raise UserError(f"{where}: missing variable {k}; is this an enformer-pytorch Enformer?")
    half, _, stem_width = sd["stem.0.weight"].shape
    n_tower = _count(r"conv_tower\.(\d+)\.", keys)
    filters = [sd[f"conv_tower.{i}.0.2.weight"].shape[0] for i in range(n_tower)] if n_tower else []
    _, heads, _, key_size = sd["transformer.0.0.fn.1.rel_content_bias"].shape
    channels = 2 * half
    config = EnformerConfig(**{
        "channels": channels,
        "num_transformer_layers": _count(r"transformer\.(\d+)\.", keys),
        "num_heads": heads,
        "key_size": key_size,
        "value_size": sd["transformer.0.0.fn.1.to_v.weight"].shape[0] // heads,
        "num_relative_position_features": sd["transformer.0.0.fn.1.to_rel_k.weight"].shape[1],
        "num_conv_tower_blocks": n_tower,
        "tower_divisible_by": _infer_tower(filters, channels, where),
        "stem_kernel_size": stem_width,
        "tower_kernel_size": sd["conv_tower.0.0.2.weight"].shape[-1],
        "pooling": "attention" if "stem.2.to_attn_logits.weight" in sd else "max",
        "heads": {m.group(1): sd[k].shape[0] for k in keys if (m := re.match(r"_heads\.(\w+)\.0\.weight$", k))},
        **config_overrides,
    })
    names: dict[str, tuple[str, str]] = {}
    optional: dict[str, str] = {}

    def bn(ours: str, theirs: str) -> None:
        for o, t in (("weight", "weight"), ("bias", "bias"), ("running_mean", "running_mean"), ("running_var", "running_var")):
            names[f"{ours}.{o}"] = (f"{theirs}.{t}", "same")
        optional[f"{ours}.num_batches_tracked"] = f"{theirs}.num_batches_tracked"

    def conv_block(ours: str, theirs: str) -> None:
        bn(f"{ours}.norm", f"{theirs}.0")
        names[f"{ours}.conv.weight"] = (f"{theirs}.2.weight", "same")
        names[f"{ours}.conv.bias"] = (f"{theirs}.2.bias", "same")

    def same(ours: str, theirs: str, params=("weight", "bias")) -> None:
        for p in params:
            names[f"{ours}.{p}"] = (f"{theirs}.{p}", "same")

    same("stem.conv", "stem.0")
    conv_block("stem.pointwise.module", "stem.1.fn")
    if config.pooling == "attention":
        names["stem.pool.weight"] = ("stem.2.to_attn_logits.weight", "pool2d")
    for i in range(n_tower):
        conv_block(f"conv_tower.{i}.conv", f"conv_tower.{i}.0")
        conv_block(f"conv_tower.{i}.pointwise.module", f"conv_tower.{i}.1.fn")
        if config.pooling == "attention":
            names[f"conv_tower.{i}.pool.weight"] = (f"conv_tower.{i}.2.to_attn_logits.weight", "pool2d")
    for i in range(config.num_transformer_layers):
        t, o = f"transformer.{i}", f"transformer.{i}"
        same(f"{o}.mha_norm", f"{t}.0.fn.0")
        for ours, theirs in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("r_k", "to_rel_k")):
            same(f"{o}.attention.{ours}", f"{t}.0.fn.1.{theirs}", ("weight",))
        same(f"{o}.attention.output", f"{t}.0.fn.1.to_out")
        names[f"{o}.attention.r_w_bias"] = (f"{t}.0.fn.1.rel_content_bias", "same")
        names[f"{o}.attention.r_r_bias"] = (f"{t}.0.fn.1.rel_pos_bias", "same")
        same(f"{o}.mlp_norm", f"{t}.1.fn.0")
        same(f"{o}.mlp_linear1", f"{t}.1.fn.1")
        same(f"{o}.mlp_linear2", f"{t}.1.fn.4")
    conv_block("final_pointwise.conv_block", "final_pointwise.1")
    for head in config.heads:
        same(f"heads.{head}.linear", f"_heads.{head}.0")
    return _assemble(config, names, sd, optional, where)


def _read_torch_state(path: Path) -> dict[str, torch.Tensor]:
    if path.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).exists():
                return _read_torch_state(path / name)
        raise UserError(f"{path}: folder has neither model.safetensors nor pytorch_model.bin")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise UserError(f"{path}: cannot read as a PyTorch state dict ({type(e).__name__}: {e})") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path}: not a state dict of tensors")
    return obj


# -- Sonnet -------------------------------------------------------------------------------------

_SONNET_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"


def read_sonnet_checkpoint(prefix: str) -> dict[str, torch.Tensor]:
    """Variables of a tf.train.Checkpoint under `module/`, read with TensorFlow's checkpoint reader."""
    try:
        import tensorflow as tf
    except ImportError:
        raise UserError("reading a Sonnet checkpoint needs TensorFlow: pip install 'enformer-train[tf]'") from None
    try:
        reader = tf.train.load_checkpoint(prefix)
    except Exception as e:  # noqa: BLE001 - TF raises many types for unreadable checkpoints
        raise UserError(f"{prefix}: not a readable TensorFlow checkpoint ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    out = {}
    for key in reader.get_variable_to_shape_map():
        if key.startswith("module/") and key.endswith(_SONNET_SUFFIX):
            out[key[len("module/"):-len(_SONNET_SUFFIX)]] = torch.from_numpy(np.array(reader.get_tensor(key)))
    if not out:
        raise UserError(f"{prefix}: checkpoint has no variables under 'module/'; expected "
                        "tf.train.Checkpoint(module=enformer), as DeepMind's sonnet_weights")
    return out


def _first(source: dict[str, torch.Tensor], *candidates: str) -> str:
    for c in candidates:
        if c in source:
            return c
    return candidates[0]


def from_sonnet(source: dict[str, torch.Tensor], where: str = "checkpoint", **config_overrides) -> Enformer:
    """An Enformer with the weights of DeepMind's Sonnet Enformer (variables named as in the checkpoint,
    without the 'module/' prefix and the '/.ATTRIBUTES/VARIABLE_VALUE' suffix)."""
    trunk = "_trunk/_layers"
    stem_w = f"{trunk}/0/_layers/0/w"
    if stem_w not in source:
        raise UserError(f"{where}: missing variable {stem_w}; is this DeepMind's Enformer?")
    keys = list(source)
    stem_width, _, half = source[stem_w].shape
    channels = 2 * half
    n_tower = _count(rf"{trunk}/1/_layers/(\d+)/", keys)
    filters = [source[f"{trunk}/1/_layers/{i}/_layers/0/_layers/2/w"].shape[-1] for i in range(n_tower)]
    attn = f"{trunk}/2/_layers/0/_layers/0/_module/_layers/1"
    for k in (f"{attn}/_r_w_bias", f"{attn}/_q_layer/w", f"{attn}/_v_layer/w", f"{attn}/_r_k_layer/w"):
        if k not in source:
            raise UserError(f"{where}: missing variable {k}; is this DeepMind's Enformer?")
    r_w = source[f"{attn}/_r_w_bias"]
    heads, key_size = r_w.shape[1], r_w.shape[-1]
    config = EnformerConfig(**{
        "channels": channels,
        "num_transformer_layers": _count(rf"{trunk}/2/_layers/(\d+)/", keys),
        "num_heads": heads,
        "key_size": key_size,
        "value_size": source[f"{attn}/_v_layer/w"].shape[1] // heads,
        "num_relative_position_features": source[f"{attn}/_r_k_layer/w"].shape[0],
        "num_conv_tower_blocks": n_tower,
        "tower_divisible_by": _infer_tower(filters, channels, where),
        "stem_kernel_size": stem_width,
        "tower_kernel_size": source[f"{trunk}/1/_layers/0/_layers/0/_layers/2/w"].shape[0],
        "pooling": "attention" if f"{trunk}/0/_layers/2/_logit_linear/w" in source else "max",
        "heads": {m.group(1): source[k].shape[-1] for k in keys if (m := re.match(r"_heads/(\w+)/_layers/0/w$", k))},
        **config_overrides,
    })
    names: dict[str, tuple[str, str]] = {}
    optional: dict[str, str] = {}
    ignored = set()

    def bn(ours: str, theirs: str) -> None:
        names[f"{ours}.weight"] = (f"{theirs}/scale", "flat")
        names[f"{ours}.bias"] = (f"{theirs}/offset", "flat")
        for o, t in (("running_mean", "moving_mean"), ("running_var", "moving_variance")):
            names[f"{ours}.{o}"] = (_first(source, f"{theirs}/{t}/average", f"{theirs}/{t}/_average"), "flat")
            ignored.update({f"{theirs}/{t}/hidden", f"{theirs}/{t}/_hidden", f"{theirs}/{t}/counter", f"{theirs}/{t}/_counter"})
        optional[f"{ours}.num_batches_tracked"] = _first(source, f"{theirs}/moving_mean/_counter", f"{theirs}/moving_mean/counter")

    def conv_block(ours: str, theirs: str) -> None:
        bn(f"{ours}.norm", f"{theirs}/_layers/0")
        names[f"{ours}.conv.weight"] = (f"{theirs}/_layers/2/w", "conv")
        names[f"{ours}.conv.bias"] = (f"{theirs}/_layers/2/b", "flat")

    def linear(ours: str, theirs: str, bias: bool = True) -> None:
        names[f"{ours}.weight"] = (f"{theirs}/w", "linear")
        if bias:
            names[f"{ours}.bias"] = (f"{theirs}/b", "flat")

    def layer_norm(ours: str, theirs: str) -> None:
        names[f"{ours}.weight"] = (f"{theirs}/scale", "flat")
        names[f"{ours}.bias"] = (f"{theirs}/offset", "flat")

    names["stem.conv.weight"] = (stem_w, "conv")
    names["stem.conv.bias"] = (f"{trunk}/0/_layers/0/b", "flat")
    conv_block("stem.pointwise.module", f"{trunk}/0/_layers/1/_module")
    if config.pooling == "attention":
        names["stem.pool.weight"] = (f"{trunk}/0/_layers/2/_logit_linear/w", "linear")
    for i in range(n_tower):
        t = f"{trunk}/1/_layers/{i}/_layers"
        conv_block(f"conv_tower.{i}.conv", f"{t}/0")
        conv_block(f"conv_tower.{i}.pointwise.module", f"{t}/1/_module")
        if config.pooling == "attention":
            names[f"conv_tower.{i}.pool.weight"] = (f"{t}/2/_logit_linear/w", "linear")
    for i in range(config.num_transformer_layers):
        t, o = f"{trunk}/2/_layers/{i}/_layers", f"transformer.{i}"
        layer_norm(f"{o}.mha_norm", f"{t}/0/_module/_layers/0")
        a = f"{t}/0/_module/_layers/1"
        for ours, theirs in (("q", "_q_layer"), ("k", "_k_layer"), ("v", "_v_layer"), ("r_k", "_r_k_layer")):
            linear(f"{o}.attention.{ours}", f"{a}/{theirs}", bias=False)
        linear(f"{o}.attention.output", f"{a}/_embedding_layer")
        names[f"{o}.attention.r_w_bias"] = (f"{a}/_r_w_bias", "same")
        names[f"{o}.attention.r_r_bias"] = (f"{a}/_r_r_bias", "same")
        layer_norm(f"{o}.mlp_norm", f"{t}/1/_module/_layers/0")
        linear(f"{o}.mlp_linear1", f"{t}/1/_module/_layers/1")
        linear(f"{o}.mlp_linear2", f"{t}/1/_module/_layers/4")
    conv_block("final_pointwise.conv_block", f"{trunk}/4/_layers/0")
    for head in config.heads:
        linear(f"heads.{head}.linear", f"_heads/{head}/_layers/0")
    return _assemble(config, names, source, optional, where, ignore=lambda k: k in ignored)


def convert(src: str, dst: str, fmt: str = "auto") -> Enformer:
    """Import `src` (Sonnet checkpoint prefix, or enformer-pytorch file/folder) and save it to `dst`."""
    path = Path(src)
    if fmt == "auto":
        is_tf = Path(src + ".index").exists() or (path.is_dir() and any(path.glob("*.index")))
        fmt = "sonnet" if is_tf else "enformer-pytorch"
    if fmt == "sonnet":
        prefix = src
        if path.is_dir():
            indexes = sorted(path.glob("*.index"))
            if len(indexes) != 1:
                raise UserError(f"{src}: expected one checkpoint (*.index) in the folder, found {len(indexes)}")
            prefix = str(indexes[0])[: -len(".index")]
        model = from_sonnet(read_sonnet_checkpoint(prefix), where=src)
    else:
        if not path.exists():
            raise UserError(f"{src}: no such file or folder")
        model = from_enformer_pytorch(_read_torch_state(path), where=src)
    save_model(model, dst)
    return model
