"""Imports of the released Sonnet checkpoint and of enformer-pytorch state dicts.

An import maps every tensor of the model to exactly one source variable. A missing, extra or
misshapen variable is an error naming it, and nothing is written unless the whole model loads.

Each format's name map is a table of templates, {our name: source name}, as torchtitan's
state-dict adapters write theirs: `{i}` is the index of a conv tower or transformer block and
`{head}` a head's name, filled in for every tensor the model built from the inferred config has.
A source tensor whose layout differs from ours is written (source name, layout), and a source
name may be a tuple of the spellings that Sonnet versions use; the first present wins.
Layouts: 'same' (a bare name), 'linear' (Sonnet [in, out] -> [out, in]), 'conv' (Sonnet
[width, in, out] -> [out, in, width]), 'flat' (any shape with the same elements, e.g. Sonnet's
[1, 1, C] batch-norm parameters), 'pool2d' (a [C, C, 1, 1] 1x1 conv), 'counter' (a batch norm's
optional step count).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import UserError
from ..files import torch_file_problem
from .config import EnformerConfig
from .enformer import Enformer, build_model

# An imported moving average with no step counter is treated as long converged, so that further
# training continues it as a plain exponential average (the debiasing factor is then 1).
_CONVERGED_COUNTER = 1_000_000

Table = dict[str, str | tuple[str | tuple[str, ...], str]]


def _spellings_and_layout(entry) -> tuple[tuple[str, ...], str]:
    names, layout = (entry, "same") if isinstance(entry, str) else entry
    return ((names,) if isinstance(names, str) else names), layout


def _within(blocks: dict[str, str], parts: Table, sep: str) -> Table:
    """The entries of `parts` (one conv block's tensors) under each {our prefix: source prefix}."""
    out: Table = {}
    for ours, theirs in blocks.items():
        for part, entry in parts.items():
            names, layout = _spellings_and_layout(entry)
            out[f"{ours}.{part}"] = (tuple(f"{theirs}{sep}{name}" for name in names), layout)
    return out


# Our name with its block index and head name replaced by the table's fields.
_FIELDS = (re.compile(r"^(conv_tower|transformer)\.(?P<i>\d+)\."), re.compile(r"^heads\.(?P<head>[^.]+)\."))


def _template(name: str) -> tuple[str, dict[str, str]]:
    fields: dict[str, str] = {}
    for pattern in _FIELDS:
        if m := pattern.match(name):
            (field, value), = m.groupdict().items()
            fields[field] = value
            name = name[:m.start(field)] + "{" + field + "}" + name[m.end(field):]
    return name, fields


def _to_layout(t: torch.Tensor, layout: str, shape: tuple) -> torch.Tensor | None:
    if layout == "linear" and t.ndim == 2:
        t = t.t()
    elif layout == "conv" and t.ndim == 3:
        t = t.permute(2, 1, 0)
    elif layout in ("flat", "pool2d") and t.numel() == int(torch.tensor(shape).prod()):
        t = t.reshape(shape)
    return t.contiguous() if tuple(t.shape) == tuple(shape) else None


def _assemble(config: EnformerConfig, table: Table, source: dict[str, torch.Tensor], where: str,
              ignore: Callable[[str, set[str]], bool] = lambda k, used: False) -> Enformer:
    model = build_model(config)
    state = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    used = set()
    for ours, target in state.items():
        template, fields = _template(ours)
        if template not in table:  # pragma: no cover - a table that misses a model tensor is a bug here
            raise RuntimeError(f"no source for {ours}")
        spellings, layout = _spellings_and_layout(table[template])
        spellings = [s.format(**fields) for s in spellings]
        theirs = next((s for s in spellings if s in source), spellings[0])
        if layout == "counter":
            value = int(source[theirs].reshape(-1)[0]) if theirs in source else 0
            out[ours] = torch.tensor(value if value > 0 else _CONVERGED_COUNTER, dtype=torch.long)
            used.add(theirs)
            continue
        if theirs not in source:
            raise UserError(f"{where}: missing variable {theirs} (for {ours}); is this a complete Enformer?")
        t = _to_layout(source[theirs].float() if target.is_floating_point() else source[theirs], layout, target.shape)
        if t is None:
            raise UserError(f"{where}: variable {theirs} has shape {tuple(source[theirs].shape)}, "
                            f"expected {tuple(target.shape)} for {ours}")
        out[ours] = t.to(target.dtype)
        used.add(theirs)
    extra = sorted(k for k in source if k not in used and not ignore(k, used))
    if extra:
        raise UserError(f"{where}: unexpected variable {extra[0]}" + (f" and {len(extra) - 1} more" if len(extra) > 1 else "")
                        + "; the checkpoint is not the Enformer this importer knows")
    model.load_state_dict(out, strict=True)
    return model


def _infer_tower(filters: list[int], channels: int, where: str) -> int:
    for div in (128, 64, 32, 16, 8, 4, 2, 1):
        try:
            cfg = EnformerConfig(channels=channels, num_conv_tower_blocks=len(filters), tower_divisible_by=div,
                                 heads={"x": 1}, num_heads=1, sequence_length=2 ** (len(filters) + 1))
        except UserError:  # a rounding whose tower does not end at channels
            continue
        if cfg.tower_filters == filters:
            return div
    raise UserError(f"{where}: conv tower filters {filters} are not exponentially spaced from {channels // 2} "
                    f"to {channels} with any rounding this model supports")


def _count(prefix_re: str, keys) -> int:
    found = {int(m.group(1)) for k in keys if (m := re.match(prefix_re, k))}
    return max(found) + 1 if found else 0


# -- enformer-pytorch ---------------------------------------------------------------------------

# One conv block: BatchNorm1d at .0, GELU at .1, Conv1d at .2.
_ENFORMER_PYTORCH_CONV_BLOCK: Table = {
    "norm.weight": "0.weight",
    "norm.bias": "0.bias",
    "norm.running_mean": "0.running_mean",
    "norm.running_var": "0.running_var",
    "norm.num_batches_tracked": ("0.num_batches_tracked", "counter"),
    "conv.weight": "2.weight",
    "conv.bias": "2.bias",
}

_ENFORMER_PYTORCH: Table = {
    "stem.conv.weight": "stem.0.weight",
    "stem.conv.bias": "stem.0.bias",
    "stem.pool.weight": ("stem.2.to_attn_logits.weight", "pool2d"),
    "conv_tower.{i}.pool.weight": ("conv_tower.{i}.2.to_attn_logits.weight", "pool2d"),
    **_within({"stem.pointwise.module": "stem.1.fn",
               "conv_tower.{i}.conv": "conv_tower.{i}.0",
               "conv_tower.{i}.pointwise.module": "conv_tower.{i}.1.fn",
               "final_pointwise.conv_block": "final_pointwise.1"}, _ENFORMER_PYTORCH_CONV_BLOCK, sep="."),
    "transformer.{i}.mha_norm.weight": "transformer.{i}.0.fn.0.weight",
    "transformer.{i}.mha_norm.bias": "transformer.{i}.0.fn.0.bias",
    "transformer.{i}.attention.q.weight": "transformer.{i}.0.fn.1.to_q.weight",
    "transformer.{i}.attention.k.weight": "transformer.{i}.0.fn.1.to_k.weight",
    "transformer.{i}.attention.v.weight": "transformer.{i}.0.fn.1.to_v.weight",
    "transformer.{i}.attention.r_k.weight": "transformer.{i}.0.fn.1.to_rel_k.weight",
    "transformer.{i}.attention.output.weight": "transformer.{i}.0.fn.1.to_out.weight",
    "transformer.{i}.attention.output.bias": "transformer.{i}.0.fn.1.to_out.bias",
    "transformer.{i}.attention.r_w_bias": "transformer.{i}.0.fn.1.rel_content_bias",
    "transformer.{i}.attention.r_r_bias": "transformer.{i}.0.fn.1.rel_pos_bias",
    "transformer.{i}.mlp_norm.weight": "transformer.{i}.1.fn.0.weight",
    "transformer.{i}.mlp_norm.bias": "transformer.{i}.1.fn.0.bias",
    "transformer.{i}.mlp_linear1.weight": "transformer.{i}.1.fn.1.weight",
    "transformer.{i}.mlp_linear1.bias": "transformer.{i}.1.fn.1.bias",
    "transformer.{i}.mlp_linear2.weight": "transformer.{i}.1.fn.4.weight",
    "transformer.{i}.mlp_linear2.bias": "transformer.{i}.1.fn.4.bias",
    "heads.{head}.linear.weight": "_heads.{head}.0.weight",
    "heads.{head}.linear.bias": "_heads.{head}.0.bias",
}


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
    return _assemble(config, _ENFORMER_PYTORCH, sd, where)


def is_enformer_pytorch_folder(path: str | os.PathLike) -> bool:
    """A Hugging Face / enformer-pytorch model folder (save_pretrained, or a download of
    EleutherAI/enformer-official-rough): config.json beside pytorch_model.bin or model.safetensors."""
    path = Path(path)
    return (path.is_dir() and (path / "config.json").is_file()
            and any((path / name).is_file() for name in ("model.safetensors", "pytorch_model.bin")))


def is_sonnet_checkpoint(path: str | os.PathLike) -> bool:
    """A TensorFlow (Sonnet) checkpoint: its prefix (PREFIX.index beside it) or a folder holding one."""
    path = Path(path)
    return Path(str(path) + ".index").exists() or (path.is_dir() and any(path.glob("*.index")))


def load_enformer_pytorch_folder(path: str | os.PathLike) -> Enformer:
    """The Enformer of an enformer-pytorch / Hugging Face folder, converted in memory (nothing is
    written; `enformer-train convert` writes it once as a model file). Sizes come from the tensors,
    the target length from config.json."""
    path = Path(path)
    try:
        hparams = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path / 'config.json'}: not readable JSON ({e})") from None
    overrides = {"target_length": int(hparams["target_length"])} if "target_length" in hparams else {}
    return from_enformer_pytorch(_read_torch_state(path), where=str(path), **overrides)


def _read_torch_state(path: Path) -> dict[str, torch.Tensor]:
    if path.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).exists():
                return _read_torch_state(path / name)
        raise UserError(f"{path}: folder has neither model.safetensors nor pytorch_model.bin")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"{path}: not a readable safetensors file ({e}); expected an enformer-pytorch "
                            "state dict") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise UserError(f"{path}: {torch_file_problem(path, e)}; expected an enformer-pytorch state dict "
                        "(.pt, .bin or .safetensors, or their folder) or a Sonnet checkpoint (PREFIX.index "
                        "and PREFIX.data-*)") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path}: not a state dict of tensors")
    return obj


# -- Sonnet -------------------------------------------------------------------------------------

_SONNET_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"

# One conv block: BatchNorm at _layers/0, GELU at _layers/1, Conv1D at _layers/2. The moving
# averages are spelled with or without a leading underscore, depending on the Sonnet version.
_SONNET_CONV_BLOCK: Table = {
    "norm.weight": ("_layers/0/scale", "flat"),
    "norm.bias": ("_layers/0/offset", "flat"),
    "norm.running_mean": (("_layers/0/moving_mean/average", "_layers/0/moving_mean/_average"), "flat"),
    "norm.running_var": (("_layers/0/moving_variance/average", "_layers/0/moving_variance/_average"), "flat"),
    "norm.num_batches_tracked": (("_layers/0/moving_mean/_counter", "_layers/0/moving_mean/counter"), "counter"),
    "conv.weight": ("_layers/2/w", "conv"),
    "conv.bias": ("_layers/2/b", "flat"),
}

_SONNET: Table = {
    "stem.conv.weight": ("_trunk/_layers/0/_layers/0/w", "conv"),
    "stem.conv.bias": ("_trunk/_layers/0/_layers/0/b", "flat"),
    "stem.pool.weight": ("_trunk/_layers/0/_layers/2/_logit_linear/w", "linear"),
    "conv_tower.{i}.pool.weight": ("_trunk/_layers/1/_layers/{i}/_layers/2/_logit_linear/w", "linear"),
    **_within({"stem.pointwise.module": "_trunk/_layers/0/_layers/1/_module",
               "conv_tower.{i}.conv": "_trunk/_layers/1/_layers/{i}/_layers/0",
               "conv_tower.{i}.pointwise.module": "_trunk/_layers/1/_layers/{i}/_layers/1/_module",
               "final_pointwise.conv_block": "_trunk/_layers/4/_layers/0"}, _SONNET_CONV_BLOCK, sep="/"),
    "transformer.{i}.mha_norm.weight": ("_trunk/_layers/2/_layers/{i}/_layers/0/_module/_layers/0/scale", "flat"),
    "transformer.{i}.mha_norm.bias": ("_trunk/_layers/2/_layers/{i}/_layers/0/_module/_layers/0/offset", "flat"),
    "transformer.{i}.attention.q.weight": ("_trunk/_layers/2/_layers/{i}/_layers/0/_module/_layers/1/_q_layer/w", "linear"),
    "transformer.{i}.attention.k.weight": ("_trunk/_layers/2/_layers/{i}/_layers/0/_module/_layers/1/_k_layer/w", "linear"),
    "transformer.{i}.attention.v.weight": ("_trunk/_layers/2/_layers/{i}/_layers/0/_module/_layers/1/_v_layer/w", "linear"),
    "transformer.{i}.attention.r_k.weight": ("_trunk/_layers/2/_layers/{i}/_layers/0/_module/_layers/1/_r_k_layer/w", "linear"),
    "transformer.{i}.attention.output.weight": ("_trunk/_layers/2/_layers/{i}/_layers/0/_module/_layers/1/_embedding_layer/w", "linear"),
    "transformer.{i}.attention.output.bias": ("_trunk/_layers/2/_layers/{i}/_layers/0/_module/_layers/1/_embedding_layer/b", "flat"),
    "transformer.{i}.attention.r_w_bias": ("_trunk/_layers/2/_layers/{i}/_layers/0/_module/_layers/1/_r_w_bias", "same"),
    "transformer.{i}.attention.r_r_bias": ("_trunk/_layers/2/_layers/{i}/_layers/0/_module/_layers/1/_r_r_bias", "same"),
    "transformer.{i}.mlp_norm.weight": ("_trunk/_layers/2/_layers/{i}/_layers/1/_module/_layers/0/scale", "flat"),
    "transformer.{i}.mlp_norm.bias": ("_trunk/_layers/2/_layers/{i}/_layers/1/_module/_layers/0/offset", "flat"),
    "transformer.{i}.mlp_linear1.weight": ("_trunk/_layers/2/_layers/{i}/_layers/1/_module/_layers/1/w", "linear"),
    "transformer.{i}.mlp_linear1.bias": ("_trunk/_layers/2/_layers/{i}/_layers/1/_module/_layers/1/b", "flat"),
    "transformer.{i}.mlp_linear2.weight": ("_trunk/_layers/2/_layers/{i}/_layers/1/_module/_layers/4/w", "linear"),
    "transformer.{i}.mlp_linear2.bias": ("_trunk/_layers/2/_layers/{i}/_layers/1/_module/_layers/4/b", "flat"),
    "heads.{head}.linear.weight": ("_heads/{head}/_layers/0/w", "linear"),
    "heads.{head}.linear.bias": ("_heads/{head}/_layers/0/b", "flat"),
}

# A moving average's other slots: Sonnet's hidden value and counter (the mean's counter is read as
# the step count; the rest carry nothing the model keeps).
_SONNET_AVERAGE_SLOT = re.compile(r"^(.*/moving_(?:mean|variance))/_?(?:hidden|counter)$")


def _unused_sonnet_slot(name: str, used: set[str]) -> bool:
    m = _SONNET_AVERAGE_SLOT.match(name)
    return bool(m) and (f"{m.group(1)}/average" in used or f"{m.group(1)}/_average" in used)


def read_sonnet_checkpoint(prefix: str) -> dict[str, torch.Tensor]:
    """Variables of a tf.train.Checkpoint under `module/`, read with TensorFlow's checkpoint reader."""
    try:
        import tensorflow as tf  # optional: the tf extra (Sonnet checkpoints)
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
    return _assemble(config, _SONNET, source, where, ignore=_unused_sonnet_slot)


def source_target_length(src: str, given: int | None = None) -> tuple[int, str]:
    """The output bins a converted model is built for, and where that number comes from: `given`,
    else the config.json of an enformer-pytorch (Hugging Face) folder or beside the file, else the
    paper's 896 (no weight has a shape that depends on it)."""
    if given is not None:
        if given <= 0:
            raise UserError(f"--target-length {given}: must be a positive number of bins")
        return given, "from --target-length"
    path = Path(src)
    for candidate in (path / "config.json", path.parent / "config.json"):
        if candidate.is_file():
            try:
                value = json.loads(candidate.read_text()).get("target_length")
            except (ValueError, AttributeError):
                value = None
            if isinstance(value, int) and value > 0:
                return value, f"from {candidate}"
    default = EnformerConfig().target_length
    return default, (f"the paper's {default}: the source does not record it; give --target-length if the model "
                     f"was trained for another")


def describe_converted(model: Enformer, dst: str, target_note: str) -> str:
    """What `convert` wrote, in one paragraph for the user."""
    c = model.config
    heads = ", ".join(f"{name} {n:,}" for name, n in c.heads.items())
    return (f"wrote {dst}: {sum(p.numel() for p in model.parameters()):,} parameters; channels {c.channels}, "
            f"{c.num_transformer_layers} transformer layers, {c.num_heads} attention heads, {c.num_conv_tower_blocks} "
            f"conv tower blocks, {c.pooling} pooling; heads (tracks) {heads}; input {c.sequence_length:,} bp -> "
            f"{c.target_length} bins of {c.bin_size} bp (target_length {target_note})")


def import_model(src: str, fmt: str = "auto", target_length: int | None = None) -> Enformer:
    """The model of `src` (Sonnet checkpoint prefix, or enformer-pytorch file/folder), built for
    `target_length` output bins (default: see source_target_length); `convert` saves it."""
    target_length = source_target_length(src, target_length)[0]
    path = Path(src)
    if fmt == "auto":
        fmt = "sonnet" if is_sonnet_checkpoint(src) else "enformer-pytorch"
    if fmt == "sonnet":
        prefix = src
        if path.is_dir():
            indexes = sorted(path.glob("*.index"))
            if len(indexes) != 1:
                raise UserError(f"{src}: expected one checkpoint (*.index) in the folder, found {len(indexes)}")
            prefix = str(indexes[0])[: -len(".index")]
        model = from_sonnet(read_sonnet_checkpoint(prefix), where=src, target_length=target_length)
    else:
        if not path.exists():
            raise UserError(f"{src}: no such file or folder")
        model = from_enformer_pytorch(_read_torch_state(path), where=src, target_length=target_length)
    return model
