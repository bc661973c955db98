"""`enformer-train config`: the resolved config as YAML, each key with its meaning and default,
made from the config dataclasses; every --help points to it; --version."""
import re
from dataclasses import fields

import pytest
import yaml

from enformer_train import __version__
from enformer_train.cli import build_parser, main
from enformer_train.config import Config, DataConfig, TrainConfig, config_from_dict
from enformer_train.model.config import EnformerConfig


def _plain(d):
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def test_every_config_field_has_a_one_line_meaning():
    for cls in (EnformerConfig, DataConfig, TrainConfig):
        for f in fields(cls):
            assert f.metadata.get("help") and "\n" not in f.metadata["help"], f"{cls.__name__}.{f.name}"


def test_config_prints_every_key_with_meaning_and_default_as_loadable_yaml(capsys):
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    parsed = yaml.safe_load(out)
    expected = Config().to_dict()
    assert {s: _plain(v) for s, v in parsed.items()} == {s: _plain(v) for s, v in expected.items()}
    for section, cls in (("model", EnformerConfig), ("data", DataConfig), ("train", TrainConfig)):
        for f in fields(cls):
            line = next(line for line in out.splitlines() if line.startswith(f"  {f.name}: "))
            assert f"# {f.metadata['help']} (default: " in line, line
    assert "  clip_grad_norm: 0.2  # clip gradients to this global norm" in out
    assert "(default: 0.2)" in out


def test_config_resolves_a_file_and_overrides(capsys):
    from enformer_train.demo import packaged_config

    assert main(["config", "--config", str(packaged_config("tiny.yaml")), "train.steps=7", "data.stores.human=stores/h"]) == 0
    out = capsys.readouterr().out
    config = config_from_dict(yaml.safe_load(out))
    assert config.train.steps == 7 and config.model.channels == 64 and config.data.stores == {"human": "stores/h"}
    assert re.search(r"^  steps: 7  # training steps \(default: 150000\)$", out, re.M)
    assert main(["config", "train.nonsense=1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown option train.nonsense" in err


def test_every_help_points_to_config_and_version_prints(capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        if name != "config":
            assert "enformer-train config" in p.format_help(), name
    assert "enformer-train config" in parser.format_help()
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"enformer-train {__version__}"
