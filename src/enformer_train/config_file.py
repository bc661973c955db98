"""YAML config files: plain mappings whose keys are the dataclasses' fields; the defaults are the paper's."""
from __future__ import annotations

import typing
from pathlib import Path

import yaml

from .errors import UserError
from .model.config import EnformerConfig


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


def load_model_config(path: str | Path | None) -> EnformerConfig:
    """The `model:` section of a config file as an EnformerConfig (the paper's model when path is None)."""
    if path is None:
        return EnformerConfig()
    section = read_yaml(path).get("model") or {}
    if not isinstance(section, dict):
        raise UserError(f"{path}: `model:` must be a mapping of options")
    return EnformerConfig.from_dict(section, source=str(path))
