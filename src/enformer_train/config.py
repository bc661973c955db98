"""The run's configuration: model, data and training, one dataclass each. The defaults are the
paper's recipe; YAML files and `section.key=value` overrides change them.

This is the one place that reads config files: model/ keeps only its dataclass (EnformerConfig)
and imports nothing from here.
"""
from __future__ import annotations

import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError
from .model.config import EnformerConfig

SECTIONS = ("model", "data", "train")


@dataclass
class DataConfig:
    # {organism: store folder} from `enformer-train prepare`; each organism must match a model head.
    stores: dict[str, str] = field(default_factory=dict)
    train_split: str = "train"
    valid_split: str = "valid"
    max_shift: int = 3  # augmentation: shift by up to this many bp (the store keeps the margin)
    reverse_complement: bool = True  # augmentation: reverse complement with probability 0.5
    num_workers: int = 2  # loader worker processes per rank and organism


@dataclass
class TrainConfig:
    run_dir: str = "runs/enformer"
    seed: int = 42
    steps: int = 150_000
    batch_size: int = 64  # global batch: batch_per_rank x ranks x accumulation steps
    batch_per_rank: int | None = None  # None: batch_size / ranks (no accumulation)
    learning_rate: float = 5e-4
    warmup_steps: int = 5_000
    schedule: str = "constant"  # after warmup: 'constant' or 'cosine' (to 0 at `steps`)
    weight_decay: float = 0.0  # decoupled (AdamW) when > 0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    clip_grad_norm: float = 0.2  # global norm, after the gradient all-reduce; 0 disables
    # 'alternate': an optimizer update per organism batch (official colab); 'sum': one update on the
    # summed losses of separate forwards; 'joint': one forward over all organisms' batches together
    update: str = "alternate"
    precision: str = "auto"  # 'auto' (bf16 autocast on CUDA, float32 elsewhere), 'bf16', 'fp32'
    compile: bool = False
    device: str = "auto"  # 'auto', 'cpu', 'cuda'
    log_every: int = 10
    eval_every: int = 5_000
    eval_at_start: bool = False  # also validate the untrained model (step 0), e.g. for a baseline
    eval_batches: int | None = None  # None: the whole validation split
    eval_batch_per_rank: int | None = None  # None: batch_per_rank
    checkpoint_every: int = 1_000
    keep_checkpoints: int = 3
    max_nonfinite: int = 10  # stop (with a checkpoint) after this many steps in a row with a skipped update
    tensorboard: bool = True  # when the tensorboard package is installed
    wandb_project: str | None = None

    def bf16_autocast(self, device_type: str) -> bool:
        """Whether forward passes run under bf16 autocast on this device type ('cpu', 'cuda')."""
        return self.precision == "bf16" or (self.precision == "auto" and device_type == "cuda")


@dataclass
class Config:
    model: EnformerConfig = field(default_factory=EnformerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return {"model": asdict(self.model), "data": asdict(self.data), "train": asdict(self.train)}

    def validate(self) -> None:
        t = self.train
        if t.schedule not in ("constant", "cosine"):
            raise UserError(f"train.schedule must be 'constant' or 'cosine', got {t.schedule!r}")
        if t.update not in ("alternate", "sum", "joint"):
            raise UserError(f"train.update must be 'alternate', 'sum' or 'joint', got {t.update!r}")
        if t.precision not in ("auto", "bf16", "fp32"):
            raise UserError(f"train.precision must be 'auto', 'bf16' or 'fp32', got {t.precision!r}")
        if not self.data.stores:
            raise UserError("data.stores is empty: give {organism: store folder}, e.g. data.stores.human=stores/human")
        for organism in self.data.stores:
            if organism not in self.model.heads:
                raise UserError(f"data.stores has {organism!r} but the model's heads are {', '.join(self.model.heads)}")

    def write(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


# -- reading ------------------------------------------------------------------------------------


def coerce(cls, values: dict, where: str) -> dict:
    """Values of a YAML mapping converted to the dataclass's field types where YAML is loose
    (YAML reads 1e-3 as a string, 5 where a float is meant as an int)."""
    hints = typing.get_type_hints(cls)
    out = dict(values)
    for key, value in values.items():
        hint = hints.get(key)
        if value is None or hint is None:
            continue
        base = {a for a in typing.get_args(hint) if a is not type(None)} or {hint}
        try:
            if float in base and isinstance(value, (str, int)) and not isinstance(value, bool):
                out[key] = float(value)
            elif int in base and isinstance(value, str):
                out[key] = int(value)
        except ValueError:
            raise UserError(f"{where}: {key} must be a number, got {value!r}") from None
    return out


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of sections (model:, data:, train:), got {type(data).__name__}")
    return data


def _build(cls, values: dict, where: str):
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        what = "model option(s)" if cls is EnformerConfig else "option(s)"
        raise UserError(f"{where}: unknown {what} {', '.join(unknown)}; known: {', '.join(known)}")
    if cls is TrainConfig and "adam_betas" in values:
        values = {**values, "adam_betas": tuple(values["adam_betas"])}
    return cls(**coerce(cls, values, where))


def config_from_dict(d: dict, where: str = "config") -> Config:
    unknown = sorted(set(d) - set(SECTIONS))
    if unknown:
        raise UserError(f"{where}: unknown section(s) {', '.join(unknown)}; sections are model, data, train")
    for name in SECTIONS:
        if d.get(name) is not None and not isinstance(d[name], dict):
            raise UserError(f"{where}: section {name} must be a mapping")
    return Config(model=_build(EnformerConfig, d.get("model") or {}, f"{where} (model)"),
                  data=_build(DataConfig, d.get("data") or {}, f"{where} (data)"),
                  train=_build(TrainConfig, d.get("train") or {}, f"{where} (train)"))


def apply_overrides(d: dict, overrides: list[str]) -> dict:
    """`section.key=value` (value parsed as YAML; deeper keys with more dots, e.g. data.stores.human=DIR)."""
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise UserError(f"override {item!r}: expected section.key=value, e.g. train.steps=1000")
        key, value = item.split("=", 1)
        *parents, leaf = key.split(".")
        node = d
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"override {item!r}: {part} is not a section")
        try:
            node[leaf] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise UserError(f"override {item!r}: value is not valid YAML ({e})") from None
    return d


def load_config(path: str | None, overrides: list[str] = ()) -> Config:
    """The run config: defaults, then the YAML file at `path`, then `section.key=value` overrides."""
    d = read_yaml(path) if path else {}
    d = apply_overrides(d, list(overrides))
    config = config_from_dict(d, where=path or "overrides")
    config.validate()
    return config


def load_model_config(path: str | None) -> EnformerConfig:
    """The `model:` section of a config file as an EnformerConfig (the paper's model when path is None)."""
    if path is None:
        return EnformerConfig()
    section = read_yaml(path).get("model") or {}
    if not isinstance(section, dict):
        raise UserError(f"{path}: `model:` must be a mapping of options")
    return _build(EnformerConfig, section, f"{path} (model)")
