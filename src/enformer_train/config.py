"""The run's configuration: model, data and training, one dataclass each. The defaults are the
paper's recipe; YAML files and `section.key=value` overrides change them.

This is the one place that reads config files: model/ keeps only its dataclass (EnformerConfig)
and imports nothing from here.
"""
from __future__ import annotations

import difflib
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import yaml

from .errors import UserError
from .model.config import EnformerConfig, option

SECTIONS = ("model", "data", "train")


@dataclass
class DataConfig:
    stores: dict[str, str] = option(dict, "{organism: store folder} from `enformer-train prepare`; each "
                                          "organism must match a model head")
    train_split: str = option("train", "split of the stores to train on")
    valid_split: str = option("valid", "split of the stores to validate on")
    max_shift: int = option(3, "augmentation: shift by up to this many bp (the store keeps the margin)")
    reverse_complement: bool = option(True, "augmentation: reverse complement with probability 0.5")
    num_workers: int = option(2, "loader worker processes per rank and organism")


@dataclass
class TrainConfig:
    run_dir: str = option("runs/enformer", "run folder: config.yaml, metrics.jsonl, checkpoints/, model.safetensors")
    seed: int = option(42, "seed of everything random (same seed, same run)")
    steps: int = option(150_000, "training steps")
    batch_size: int = option(64, "global batch: batch_per_rank x ranks x accumulation steps")
    batch_per_rank: int | None = option(None, "samples per rank per forward; null: batch_size / ranks (no accumulation)")
    learning_rate: float = option(5e-4, "peak learning rate (Adam)")
    warmup_steps: int = option(5_000, "linear warmup from 0 to learning_rate")
    schedule: str = option("constant", "after warmup: 'constant' or 'cosine' (to 0 at `steps`)")
    weight_decay: float = option(0.0, "decoupled weight decay (AdamW) when > 0")
    adam_betas: tuple[float, float] = option((0.9, 0.999), "Adam's beta1, beta2")
    adam_eps: float = option(1e-8, "Adam's epsilon")
    clip_grad_norm: float = option(0.2, "clip gradients to this global norm, after the all-reduce; 0 disables")
    init_head_bias: bool = option(False, "a fresh run starts each head's biases at its tracks' mean target in the "
                                         "training split (softplus inverse), so the first steps need not move the "
                                         "trunk to fit the tracks' levels")
    update: str = option("alternate", "'alternate' (an update per organism batch, the colab), 'sum' (one update "
                                      "on summed losses) or 'joint' (one forward over all organisms)")
    precision: str = option("auto", "'auto' (bf16 autocast on CUDA, float32 elsewhere), 'bf16', 'fp32' or 'fp64' "
                                    "(float64 weights and arithmetic: several times slower; for checks that need "
                                    "no float32 round-off, e.g. that N ranks equal one)")
    compile: bool = option(False, "torch.compile the model (torch >= 2.5): one graph, its first step logged as "
                                  "compile_s, later compilations as recompiles")
    device: str = option("auto", "'auto', 'cpu' or 'cuda'")
    log_every: int = option(10, "steps between log lines and metrics.jsonl records")
    eval_every: int = option(5_000, "steps between validations")
    eval_at_start: bool = option(False, "also validate the untrained model (step 0), e.g. for a baseline")
    eval_batches: int | None = option(None, "validation batches per rank; null: the whole validation split")
    eval_batch_per_rank: int | None = option(None, "validation batch per rank; null: batch_per_rank")
    checkpoint_every: int = option(1_000, "steps between checkpoints")
    keep_checkpoints: int = option(3, "checkpoints kept (the newest good one is never deleted)")
    collective_timeout_s: float = option(600.0, "seconds a rank waits in a collective (the others frozen, hung or "
                                         "dead) before the job ends with one line, for torchrun "
                                         "--max-restarts or the scheduler to restart it")
    max_nonfinite: int = option(10, "stop (with a checkpoint) after this many skipped non-finite steps in a row")
    tensorboard: bool = option(True, "write TensorBoard logs (when tensorboard is installed)")
    wandb_project: str | None = option(None, "Weights & Biases project; null: off")
    # Fine-tuning (see train/finetune.py).
    init_from: str | None = option(None, "fine-tuning: model file, checkpoint, run folder or enformer-pytorch folder "
                                         "whose tensors load where name and shape match; null: from scratch")
    freeze: list[str] = option(list, "fine-tuning: module paths to freeze (stem, conv_tower, transformer.10, heads.NAME)")
    freeze_batchnorm: bool = option(False, "every batch norm keeps and normalises with its moving statistics")
    head_learning_rate: float | None = option(None, "learning rate of the heads; null: learning_rate")
    learning_rate_multipliers: dict = option(dict, "module path -> factor on its parameters' learning rate, e.g. "
                                                   "{transformer: 0.1}; the longest matching path wins")
    lora_rank: int = option(0, "low-rank adapters of this rank on lora_targets, the trunk frozen; 0: off")
    lora_targets: list[str] = option(lambda: ["attention.q", "attention.k", "attention.v", "attention.output",
                                              "mlp_linear1", "mlp_linear2"], "modules that get low-rank adapters")

    def bf16_autocast(self, device_type: str) -> bool:
        """Whether forward passes run under bf16 autocast on this device type ('cpu', 'cuda')."""
        return self.precision == "bf16" or (self.precision == "auto" and device_type == "cuda")

    @property
    def parameter_dtype(self) -> torch.dtype:
        """The dtype of the weights (and of the arithmetic outside autocast)."""
        return torch.float64 if self.precision == "fp64" else torch.float32


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
        if t.precision not in ("auto", "bf16", "fp32", "fp64"):
            raise UserError(f"train.precision must be 'auto', 'bf16', 'fp32' or 'fp64', got {t.precision!r}")
        if not self.data.stores:
            raise UserError("data.stores is empty: give {organism: store folder}, e.g. data.stores.human=stores/human")
        if t.collective_timeout_s <= 0:
            raise UserError(f"train.collective_timeout_s must be positive (seconds), got {t.collective_timeout_s}")
        if t.lora_rank < 0:
            raise UserError(f"train.lora_rank must be 0 (off) or positive, got {t.lora_rank}")
        for organism in self.data.stores:
            if organism not in self.model.heads:
                raise UserError(f"data.stores has {organism!r} but the model's heads are {', '.join(self.model.heads)}")

    def write(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


# -- reading ------------------------------------------------------------------------------------

_SECTION_OF = {EnformerConfig: "model", DataConfig: "data", TrainConfig: "train"}

# The smallest value each number may take (counts are whole numbers; a field that may be None
# may also be left out). Checked here, on the value the user wrote, so that a message never
# names a number derived from it.
_AT_LEAST = {
    "model": {"channels": 2, "num_transformer_layers": 0, "num_heads": 1, "key_size": 1, "value_size": 1,
              "num_relative_position_features": 6, "num_conv_tower_blocks": 0, "tower_divisible_by": 1,
              "stem_kernel_size": 1, "tower_kernel_size": 1, "sequence_length": 1, "target_length": 1,
              "batchnorm_decay": 0.0, "batchnorm_eps": 0.0, "layernorm_eps": 0.0},
    "data": {"max_shift": 0, "num_workers": 0},
    "train": {"seed": 0, "steps": 1, "batch_size": 1, "batch_per_rank": 1, "warmup_steps": 0, "weight_decay": 0.0,
              "clip_grad_norm": 0.0, "log_every": 1, "eval_every": 1, "eval_batches": 1,
              "eval_batch_per_rank": 1, "checkpoint_every": 1, "keep_checkpoints": 0, "max_nonfinite": 1,
              "lora_rank": 0},
}
_ABOVE_ZERO = {"learning_rate", "head_learning_rate", "adam_eps", "batchnorm_eps", "layernorm_eps"}


def known_keys() -> list[str]:
    """Every option as section.key."""
    return [f"{section}.{f.name}" for cls, section in _SECTION_OF.items() for f in fields(cls)]


def did_you_mean(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _number(section: str, key: str, value, base: set):
    """`value` as the field's number type, checked against its range; UserError naming the value."""
    name = f"{section}.{key}={value!r}" if not isinstance(value, str) else f"{section}.{key}={value}"
    kind = "a whole number" if int in base and float not in base else "a number"
    if isinstance(value, bool):
        raise UserError(f"{name}: must be {kind}, not true/false")
    try:
        number = float(value) if isinstance(value, str) else value  # YAML reads 1e-3 and 1e3 as text
        if not isinstance(number, (int, float)):
            raise ValueError
        if float in base:
            number = float(number)
        elif isinstance(number, float):
            if not number.is_integer():
                raise ValueError
            number = int(number)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"{name}: must be {kind}") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise UserError(f"{name}: must be a finite number")
    low = _AT_LEAST.get(section, {}).get(key)
    if key in _ABOVE_ZERO and number <= 0:
        raise UserError(f"{name}: must be greater than 0")
    if low is not None and number < low:
        raise UserError(f"{name}: must be {kind} of at least {low}")
    return number


def _multipliers(value) -> dict:
    """train.learning_rate_multipliers checked: module paths to numbers above 0."""
    if not isinstance(value, dict):
        raise UserError(f"train.learning_rate_multipliers={value!r}: must be a mapping of module paths to factors, "
                        "e.g. {transformer: 0.1}")
    out = {}
    for path, factor in value.items():
        key = f"learning_rate_multipliers.{path}"
        number = _number("train", key, factor, {float})
        if number <= 0:
            raise UserError(f"train.{key}={factor!r}: must be greater than 0 (train.freeze stops a module)")
        out[str(path)] = number
    return out


def coerce(cls, values: dict, where: str) -> dict:
    """Values of a YAML mapping converted to the dataclass's field types where YAML is loose
    (YAML reads 1e-3 as a string, 5 where a float is meant as an int), and every number checked
    (a whole number where a count is meant, within its range)."""
    hints = typing.get_type_hints(cls)
    section = _SECTION_OF.get(cls, where)
    out = dict(values)
    for key, value in values.items():
        hint = hints.get(key)
        if value is None or hint is None:
            continue
        if typing.get_origin(hint) in (dict, list, tuple):
            continue
        base = {a for a in typing.get_args(hint) if a is not type(None)} or {hint}
        if base & {int, float}:
            out[key] = _number(section, key, value, base)
        elif base == {bool} and not isinstance(value, bool):
            raise UserError(f"{section}.{key}={value!r}: must be true or false")
    if cls is TrainConfig and out.get("learning_rate_multipliers") is not None:
        out["learning_rate_multipliers"] = _multipliers(out["learning_rate_multipliers"])
    if cls is EnformerConfig and isinstance(out.get("heads"), dict):
        for head, tracks in out["heads"].items():
            if isinstance(tracks, bool) or not isinstance(tracks, int) or tracks < 1:
                raise UserError(f"model.heads.{head}={tracks!r}: a head's track count must be a whole number of at least 1")
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
        section = _SECTION_OF[cls]
        hint = did_you_mean(f"{section}.{unknown[0]}", [f"{section}.{k}" for k in known])
        listed = "; known: " + ", ".join(known)
        raise UserError(f"{where}: unknown {what} {', '.join(unknown)}{hint or listed}")
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
        dotted = ".".join(key.split(".")[:2])  # section.key; deeper parts are inside a mapping
        if dotted not in known_keys():
            raise UserError(f"override {item!r}: unknown option {dotted}{did_you_mean(dotted, known_keys())}"
                            if parents[0] in SECTIONS else
                            f"override {item!r}: unknown section {parents[0]!r}; sections are model, data, train")
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


def read_config(path: str | None, overrides: list[str] = ()) -> dict:
    """The raw run config: the YAML file at `path` (or nothing), then `section.key=value` overrides."""
    d = read_yaml(path) if path else {}
    return apply_overrides(d, list(overrides))


def load_config(path: str | None, overrides: list[str] = (), d: dict | None = None) -> Config:
    """The run config: defaults, then the YAML file at `path`, then `section.key=value` overrides
    (or the raw dict `d` that read_config made of them), validated."""
    d = read_config(path, overrides) if d is None else d
    config = config_from_dict(d, where=path or "overrides")
    config.validate()
    return config


def _plain(value):
    """A config value as YAML writes it (tuples as lists)."""
    if isinstance(value, tuple):
        return list(value)
    return value


def _inline(value) -> str:
    """One YAML line for a value: flow style for lists and mappings."""
    text = yaml.safe_dump(_plain(value), default_flow_style=True, width=10_000).strip()
    return text[:-len("\n...")].strip() if text.endswith("\n...") else text.removesuffix("...").strip()


def describe_config(config: Config) -> str:
    """The config as YAML, every key with its one-line meaning and its default as a comment; made
    from the dataclasses' fields, so it lists exactly the options there are."""
    lines = ["# enformer-train config: every option, its meaning and default (a file with any subset of",
             "# these keys is a --config; on the command line, section.key=value overrides one)"]
    for name in SECTIONS:
        section = getattr(config, name)
        lines.append(f"{name}:")
        for f in fields(section):
            default = f.default_factory() if f.default_factory is not MISSING else f.default
            value = _inline(getattr(section, f.name))
            comment = f.metadata.get("help", "")
            lines.append(f"  {f.name}: {value}  # {comment} (default: {_inline(default)})")
    return "\n".join(lines) + "\n"


def load_model_config(path: str | None) -> EnformerConfig:
    """The `model:` section of a config file as an EnformerConfig (the paper's model when path is None)."""
    if path is None:
        return EnformerConfig()
    section = read_yaml(path).get("model") or {}
    if not isinstance(section, dict):
        raise UserError(f"{path}: `model:` must be a mapping of options")
    return _build(EnformerConfig, section, f"{path} (model)")
