"""Fine-tuning: init_from with new and dropped heads, frozen parts, low-rank adapters, and their errors.

The trainer runs in this process (one rank) on the tiny barnyard's stores.
"""
import os
import re

os.environ.setdefault("USE_TF", "0")  # enformer-pytorch imports transformers, which would import TensorFlow

import pytest
import torch
from safetensors.torch import load_file

from conftest_data import store_dir
from enformer_train import Enformer, EnformerConfig, load_model, save_model
from enformer_train.cli import main
from enformer_train.model.lora import add_lora
from enformer_train.saved.checkpoint import load_checkpoint
from enformer_train.train.finetune import load_run_config
from enformer_train.train.metrics_log import read_metrics
from enformer_train.train.trainer import Trainer, train
from model_helpers import randomise_

SMALL = dict(channels=32, num_transformer_layers=1, num_heads=2, key_size=8, num_relative_position_features=12,
             tower_divisible_by=8, sequence_length=6144, target_length=16, dropout_rate=0.0,
             attention_dropout_rate=0.0, positional_dropout_rate=0.0, final_dropout_rate=0.0)


def _pretrained(tmp_path, heads=None, **sizes) -> str:
    """A small model with random values everywhere (moving averages too), saved as a model file."""
    torch.manual_seed(0)
    model = Enformer(EnformerConfig(**{**SMALL, **sizes, "heads": heads or {"human": 8, "mouse": 6}}))
    randomise_(model, seed=1)
    path = str(tmp_path / "pretrained.safetensors")
    save_model(model, path)
    return path


def _overrides(tmp_path, init_from, *extra, steps=6):
    return [f"train.init_from={init_from}", f"train.run_dir={tmp_path / 'run'}", f"train.steps={steps}",
            "train.batch_size=4", "train.warmup_steps=1", "train.log_every=1", f"train.eval_every={steps}",
            "train.eval_batches=1", "train.checkpoint_every=100", "train.learning_rate=0.003",
            "train.tensorboard=false", "data.num_workers=0", "train.device=cpu", *extra]


def _sample(seed=0):
    return torch.randint(0, 5, (2, 6144), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_init_from_converted_enformer_pytorch_model_gives_its_outputs_before_any_step(tmp_path):
    enformer_pytorch = pytest.importorskip("enformer_pytorch")
    torch.manual_seed(0)
    reference = enformer_pytorch.Enformer.from_hparams(
        dim=48, depth=1, heads=2, attn_dim_key=8, output_heads=dict(human=8, mouse=7), target_length=16,
        use_tf_gamma=True, dim_divisible_by=8)
    randomise_(reference, seed=2)
    torch.save(reference.state_dict(), tmp_path / "reference.pt")
    assert main(["convert", str(tmp_path / "reference.pt"), str(tmp_path / "converted.safetensors")]) == 0
    source = load_model(tmp_path / "converted.safetensors", target_length=16, sequence_length=6144).eval()
    # model sizes come from the file; the heads are the config's: human kept, mouse dropped, k562 new
    config = load_run_config(None, _overrides(
        tmp_path, tmp_path / "converted.safetensors", "model.target_length=16", "model.sequence_length=6144",
        "model.heads={human: 8, k562: 8}", f"data.stores.k562={store_dir('human')}"))
    assert config.model.channels == 48 and config.model.num_heads == 2
    trainer = Trainer(config)
    try:
        report = trainer.fine_tuning.report
        assert sorted(report["fresh"]) == ["heads.k562.linear.bias", "heads.k562.linear.weight"]
        assert sorted(report["dropped"]) == ["heads.mouse.linear.bias", "heads.mouse.linear.weight"]
        assert len(report["loaded"]) == len(source.state_dict()) - 2
        with torch.no_grad():
            got = trainer.model.eval()(_sample(), head="human")
            expected = source(_sample(), head="human")
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    finally:
        trainer.close()
    first = read_metrics(tmp_path / "run")[0]
    assert first["step"] == 0 and first["fresh"] == report["fresh"] and first["dropped"] == report["dropped"]


@pytest.mark.slow
def test_frozen_trunk_keeps_every_trunk_tensor_and_trains_the_new_head(tmp_path):
    pretrained = _pretrained(tmp_path)
    config = load_run_config(None, _overrides(
        tmp_path, pretrained, "model.heads={k562: 8}", f"data.stores.k562={store_dir('human')}",
        "train.freeze=[stem, conv_tower, transformer, final_pointwise]", steps=8))
    train(config)
    before, after = load_file(pretrained), load_file(tmp_path / "run" / "model.safetensors")
    trunk = [k for k in after if not k.startswith("heads.")]
    assert trunk and all(torch.equal(before[k], after[k]) for k in trunk)  # parameters and moving averages
    fresh = Enformer(EnformerConfig(**{**SMALL, "heads": {"k562": 8}})).heads.k562.linear.weight
    assert not torch.equal(after["heads.k562.linear.weight"], fresh)
    losses = [m["loss/k562"] for m in read_metrics(tmp_path / "run") if "loss/k562" in m]
    assert len(losses) == 8 and sum(losses[-2:]) < sum(losses[:2])
    state = load_checkpoint(tmp_path / "run")  # frozen parameters have no optimizer state
    assert len(state["optimizer"]["state"]) == 2


@pytest.mark.slow
def test_low_rank_adapters_change_alone_and_merge_into_the_saved_model(tmp_path, capsys):
    pretrained = _pretrained(tmp_path)
    config = load_run_config(None, _overrides(
        tmp_path, pretrained, f"data.stores.human={store_dir('human')}", "train.lora_rank=2",
        "train.freeze=[heads]", steps=6))
    train(config)
    # 6 targets of a 32-channel layer with 2 heads: q, k: 32 -> 2 x 8; v: 32 -> 2 x 16 (value size:
    # channels / heads); output: 32 -> 32; MLP 32 -> 64 -> 32. An adapter of rank r has r (in + out).
    expected_adapters = 2 * ((32 + 16) * 2 + (32 + 32) * 2 + (32 + 64) + (64 + 32))
    assert f"{expected_adapters:,} in low-rank adapters of rank 2" in capsys.readouterr().out
    state = load_checkpoint(tmp_path / "run")["model"]
    before = load_file(pretrained)
    adapters = [k for k in state if ".lora_" in k]
    assert len(adapters) == 12 and all(state[k].abs().max() > 0 for k in adapters if k.endswith("lora_b"))
    for k in before:  # every tensor of the base model, heads included (frozen here), is unchanged
        assert torch.equal(state[k], before[k]), k
    adapted = Enformer(EnformerConfig(**{**SMALL, "heads": {"human": 8, "mouse": 6}}))
    add_lora(adapted, 2, list(config.train.lora_targets))
    adapted.load_state_dict(state)
    merged = load_model(tmp_path / "run" / "model.safetensors")
    assert not any(".lora_" in k for k in merged.state_dict())
    with torch.no_grad():
        want, got = adapted.eval()(_sample(1), head="human"), merged.eval()(_sample(1), head="human")
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    assert not torch.equal(merged.state_dict()["transformer.0.attention.q.weight"], before["transformer.0.attention.q.weight"])


@pytest.mark.slow
def test_resumed_fine_tuning_run_equals_the_uninterrupted_one(tmp_path):
    pretrained = _pretrained(tmp_path)
    common = ["model.heads={k562: 8}", f"data.stores.k562={store_dir('human')}", "train.lora_rank=2",
              "train.checkpoint_every=3", "train.head_learning_rate=0.01"]
    full = load_run_config(None, _overrides(tmp_path / "full", pretrained, *common, steps=6))
    train(full)
    train(load_run_config(None, _overrides(tmp_path / "part", pretrained, *common, steps=3)))
    train(load_run_config(None, _overrides(tmp_path / "part", pretrained, *common, steps=6)), resume=True)
    a, b = load_file(tmp_path / "full" / "run" / "model.safetensors"), load_file(tmp_path / "part" / "run" / "model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_fine_tuning_from_a_runs_own_config_notes_a_factor_on_a_frozen_module_once(tmp_path, capsys):
    from train_helpers import overrides

    source = tmp_path / "source"
    assert main(["train", *overrides(source, 2, 4, "train.learning_rate_multipliers={transformer: 0.1}")]) == 0
    capsys.readouterr()
    # the run's own config.yaml (its factor on the transformer), a fresh head and the trunk frozen
    args = ["train", "--config", str(source / "config.yaml"), "model.heads={fresh: 8}",
            f"data.stores={{fresh: {store_dir('human')}}}", f"train.init_from={source}",
            "train.freeze=[stem, conv_tower, transformer, final_pointwise]"]
    assert main([*args, f"train.run_dir={tmp_path / 'fresh'}"]) == 0, capsys.readouterr().err
    notes = [line for line in capsys.readouterr().err.splitlines() if "learning_rate_multipliers" in line]
    assert notes == ["enformer-train train: train.learning_rate_multipliers.transformer: every parameter of "
                     "'transformer' is frozen (train.freeze or train.lora_rank), its factor 0.1 is not used"]
    assert (tmp_path / "fresh" / "model.safetensors").exists()
    # a path that names no module of the model stays an error, with its suggestion
    code = main([*args, f"train.run_dir={tmp_path / 'typo'}", "train.learning_rate_multipliers={transformr: 0.1}"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err == ("enformer-train train: error: train.learning_rate_multipliers.transformr: no module "
                                 "'transformr' in the model; did you mean transformer?")


@pytest.mark.parametrize("case, message", [
    ("shape", r"stem\.conv\.weight.*(\(16, 4, 15\).*\(24, 4, 15\)|\(24, 4, 15\).*\(16, 4, 15\))"),
    ("foreign", r"init_from|not a readable"),
    ("freeze", r"train\.freeze: 'tower' is not a module"),
])
def test_fine_tuning_errors_are_one_line(tmp_path, capsys, case, message):
    pretrained = _pretrained(tmp_path)
    extra = [f"data.stores.human={store_dir('human')}", "model.heads={human: 8}"]
    if case == "shape":
        extra += ["model.channels=48", "model.value_size=24"]  # a wider trunk than the source's
    elif case == "foreign":
        (tmp_path / "random.safetensors").write_bytes(os.urandom(4096))
        pretrained = str(tmp_path / "random.safetensors")
    else:
        extra += ["train.freeze=[tower]"]
    code = main(["train", *_overrides(tmp_path, pretrained, *extra)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert re.search(message, err), err
