"""Fine-tuning: start from saved weights, freeze parts of the model, adapt with low-rank adapters.

    train.init_from        a model file (convert's output, a run's model.safetensors), a checkpoint
                           or a run folder; tensors are matched by name and shape
    train.freeze           module paths (stem, conv_tower, transformer, final_pointwise,
                           transformer.10, heads.NAME): no gradient, no optimizer state, and their
                           batch norms keep their moving statistics
    train.freeze_batchnorm every batch norm normalises with its moving statistics and keeps them
    train.lora_rank        low-rank adapters on lora_targets; the rest of the trunk is frozen

Full fine-tuning with batch norm updating its statistics from small batches at a high learning
rate is how pretrained Enformers get wrecked (enformer-pytorch #16, #37); these switches are the
usual cures.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..config import load_config, read_config
from ..errors import UserError
from ..model.batchnorm import CrossReplicaBatchNorm
from ..model.lora import add_lora, has_lora, merge_lora
from ..model.weights import load_weights
from ..saved import load, model_config

TRUNK = ("stem", "conv_tower", "transformer", "final_pointwise")


def load_run_config(path: str | None, overrides: list[str] = ()):
    """config.load_config, but with train.init_from the model options not given are those of the
    saved model it names (so a fine-tuning config need not repeat the pretrained model's sizes)."""
    d = read_config(path, overrides)
    train = d.get("train") if isinstance(d.get("train"), dict) else {}
    if train.get("init_from"):
        given = d.get("model") if isinstance(d.get("model"), dict) else {}
        d["model"] = {**model_config(train["init_from"]), **given}
    return load_config(path, d=d)


def init_from(model: nn.Module, path: str | Path) -> dict[str, list[str]]:
    """Load into `model` every tensor of the saved model at `path` whose name and shape match.

    Returns {'loaded', 'fresh', 'dropped'} tensor names: fresh tensors (a head the file lacks or
    sizes otherwise) keep their initialisation, dropped ones are in the file only. A trunk tensor
    of another shape is a UserError naming it.
    """
    source = load(path)
    tensors = source.model.state_dict()
    return load_weights(model, tensors, where=f"train.init_from {source.path}")


def describe_report(report: dict[str, list[str]]) -> str:
    """One line: how many tensors were loaded, and which heads or modules started fresh or were dropped."""
    def parts(names: list[str]) -> str:
        groups: dict[str, int] = {}
        for name in names:
            key = ".".join(name.split(".")[:2]) if name.startswith(("heads.", "transformer.", "conv_tower.")) \
                else name.split(".")[0]
            groups[key] = groups.get(key, 0) + 1
        return ", ".join(f"{k} ({n})" for k, n in groups.items()) or "none"

    return (f"loaded {len(report['loaded'])} tensors; fresh: {parts(report['fresh'])}; "
            f"dropped: {parts(report['dropped'])}")


def _module(model: nn.Module, path: str) -> nn.Module | None:
    return dict(model.named_modules()).get(path)


def freeze(model: nn.Module, names: list[str], batchnorm: bool = False) -> list[str]:
    """Freeze the modules at `names` (their parameters stop training, their batch norms keep their
    moving statistics); with `batchnorm`, every batch norm of the model keeps its statistics.
    Returns the frozen parameter names. A name that is no module is a UserError listing valid ones."""
    frozen = []
    for name in names:
        module = _module(model, name)
        if module is None or name == "":
            tops = [n for n, _ in model.named_children()] + [f"transformer.{i}" for i in range(2)] + ["heads.NAME"]
            raise UserError(f"train.freeze: {name!r} is not a module of the model; use module paths such as "
                            f"{', '.join(tops)}")
        for pname, p in module.named_parameters(prefix=name):
            p.requires_grad_(False)
            frozen.append(pname)
        for m in module.modules():
            if isinstance(m, CrossReplicaBatchNorm):
                m.frozen = True
    if batchnorm:
        for m in model.modules():
            if isinstance(m, CrossReplicaBatchNorm):
                m.frozen = True
    return frozen


def adapt(model: nn.Module, rank: int, targets: list[str]) -> int:
    """Low-rank adapters of `rank` on the linear layers named by `targets`; everything else in the
    trunk is frozen (heads stay as they are). Returns the number of adapter parameters."""
    for part in TRUNK:
        freeze(model, [part])
    adapted = add_lora(model, rank, targets)
    if not adapted:
        raise UserError(f"train.lora_targets {targets}: no linear layer of the model matches; use names such as "
                        "attention.q, attention.k, attention.v, attention.output, mlp_linear1, mlp_linear2")
    return sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)


def plain_model(model: nn.Module) -> nn.Module:
    """The model as it is saved, without adapters: with low-rank adapters a merged copy (the model
    itself keeps training), else the model itself."""
    return merge_lora(copy.deepcopy(model)) if has_lora(model) else model


def trainable(model: nn.Module) -> dict[str, int]:
    return {"trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "total": sum(p.numel() for p in model.parameters())}


@dataclass
class FineTuning:
    """What `setup` did to a model: init_from's report, the switches in force, the adapter size."""
    init_from: str | None
    report: dict[str, list[str]] | None
    active: bool
    lora_rank: int
    adapter_parameters: int

    def announce(self, model: nn.Module, log, step: int, is_main: bool) -> None:
        """Print what was loaded, left fresh and dropped, and what trains; the same as a metrics record."""
        if not self.active:
            return
        counts = trainable(model)
        record = {"trainable_parameters": counts["trainable"], "total_parameters": counts["total"]}
        if self.report is not None:
            record.update({"init_from": self.init_from, **self.report})
        if self.lora_rank:
            record["adapter_parameters"] = self.adapter_parameters
        if is_main:
            if self.report is not None:
                print(f"init_from {self.init_from}: {describe_report(self.report)}", flush=True)
            adapters = (f" ({self.adapter_parameters:,} in low-rank adapters of rank {self.lora_rank})"
                        if self.lora_rank else "")
            print(f"training {counts['trainable']:,} of {counts['total']:,} parameters{adapters}", flush=True)
        log.log(step, record)


def setup(model: nn.Module, train, resumed: bool) -> FineTuning:
    """Apply the run config's fine-tuning options (`train` is its TrainConfig) to a new model:
    init_from (not on resume: the checkpoint holds the weights), freeze, adapters."""
    report = init_from(model, train.init_from) if train.init_from and not resumed else None
    freeze(model, train.freeze, batchnorm=train.freeze_batchnorm)
    adapters = adapt(model, train.lora_rank, train.lora_targets) if train.lora_rank else 0
    active = bool(train.init_from or train.freeze or train.freeze_batchnorm or train.lora_rank)
    return FineTuning(train.init_from, report, active, train.lora_rank, adapters)
