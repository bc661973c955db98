"""Imports of enformer-pytorch state dicts and Sonnet checkpoints, and their errors."""
import os

os.environ.setdefault("USE_TF", "0")  # enformer-pytorch imports transformers, which would import TensorFlow

import pytest
import torch

from enformer_train import load_model
from enformer_train.cli import main
from enformer_train.errors import UserError
from enformer_train.model.convert import from_enformer_pytorch, from_sonnet
from model_helpers import randomise_

enformer_pytorch = pytest.importorskip("enformer_pytorch")


def _reference(depth=2, **kw):
    torch.manual_seed(0)
    model = enformer_pytorch.Enformer.from_hparams(
        dim=192, depth=depth, heads=1, output_heads=dict(human=12, mouse=7), target_length=896,
        use_tf_gamma=True, dim_divisible_by=16, **kw)
    # Random values everywhere (the attention output starts at zero), with sharp attention, so that
    # every part, relative positions included, shapes the outputs.
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.ndim == 1:
                p.copy_(noise * 0.1 + (1.0 if name.endswith("weight") else 0.0))
            elif "rel_content_bias" in name or "rel_pos_bias" in name:
                p.copy_(noise)
            else:
                gain = 3.0 if any(s in name for s in ("to_q", "to_k", "to_rel_k")) else 1.0
                p.copy_(noise * gain / p[0].numel() ** 0.5)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.eval()


@pytest.mark.slow
def test_enformer_pytorch_model_converted_gives_the_same_outputs_at_196608_bp():
    reference = _reference()
    ours = from_enformer_pytorch(reference.state_dict()).eval()
    assert ours.config.channels == 192 and ours.config.num_transformer_layers == 2
    assert ours.config.heads == {"human": 12, "mouse": 7}
    codes = torch.randint(0, 5, (1, 196_608), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    with torch.no_grad():
        expected = reference(torch.eye(5, 4)[codes.long()])
        got = ours(codes)
    for head in expected:
        scale = expected[head].abs().max()
        assert got[head].shape == expected[head].shape == (1, 896, 12 if head == "human" else 7)
        assert (got[head] - expected[head]).abs().max() <= 1e-4 * scale, head
    # the comparison is sensitive to the positional features: enformer-pytorch's own gamma basis
    # (normalised over features, not positions) moves the outputs far beyond the tolerance
    for m in reference.modules():
        if hasattr(m, "use_tf_gamma"):
            m.use_tf_gamma = False
    with torch.no_grad():
        off = reference(torch.eye(5, 4)[codes.long()])
    assert (got["human"] - off["human"]).abs().max() > 1e-3 * expected["human"].abs().max()


def _small_state():
    torch.manual_seed(0)
    model = enformer_pytorch.Enformer.from_hparams(dim=48, depth=1, heads=2, output_heads=dict(human=5),
                                                   target_length=4, dim_divisible_by=8)
    return model.state_dict()


def _drop(sd, key):
    """Remove a variable under its name and under its `_trunk` alias."""
    alias = {"stem.": "_trunk.1.", "conv_tower.": "_trunk.2.", "transformer.": "_trunk.4.", "final_pointwise.": "_trunk.6."}
    sd.pop(key)
    for name, trunk in alias.items():
        if key.startswith(name):
            sd.pop(trunk + key[len(name):])
    return sd


@pytest.mark.parametrize("tamper,message", [
    (lambda sd: _drop(sd, "transformer.0.0.fn.1.to_k.weight"), "missing variable transformer.0.0.fn.1.to_k.weight"),
    (lambda sd: sd.__setitem__("transformer.0.0.fn.1.extra", torch.zeros(3)), "unexpected variable transformer.0.0.fn.1.extra"),
    (lambda sd: _drop(sd, "conv_tower.1.1.fn.2.bias").update({"conv_tower.1.1.fn.2.bias": torch.zeros(7)}),
     "conv_tower.1.1.fn.2.bias has shape"),
    (lambda sd: sd.__setitem__("_trunk.4.0.0.fn.0.weight", torch.full((48,), 3.0)), "alias hold different values"),
])
def test_tampered_state_dicts_are_refused_naming_the_variable(tamper, message):
    sd = {k: v.clone() for k, v in _small_state().items()}
    from_enformer_pytorch(dict(sd))  # the untampered one converts
    tamper(sd)
    with pytest.raises(UserError, match=message.replace(".", r"\.")):
        from_enformer_pytorch(sd)


def test_cli_convert_writes_nothing_on_error_and_a_loadable_file_on_success(tmp_path, capsys):
    sd = _small_state()
    torch.save(sd, tmp_path / "ok.pt")
    bad = _drop(dict(sd), "stem.0.bias")
    torch.save(bad, tmp_path / "bad.pt")
    assert main(["convert", str(tmp_path / "bad.pt"), str(tmp_path / "bad.safetensors")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "stem.0.bias" in err and "bad.pt" in err
    assert not list(tmp_path.glob("bad.safetensors*")) and not list(tmp_path.glob(".bad*"))
    assert main(["convert", str(tmp_path / "ok.pt"), str(tmp_path / "ok.safetensors")]) == 0
    model = load_model(tmp_path / "ok.safetensors")
    torch.testing.assert_close(model.stem.conv.weight, sd["stem.0.weight"])


def _sonnet_variables(model):
    """Our weights as DeepMind's Sonnet Enformer names and lays them out (Sequential._layers,
    Residual._module, BatchNorm scale/offset/moving_mean.average, Linear w [in, out], Conv1D
    w [width, in, out]), written here from the reference's module structure."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    out = {}

    def linear(theirs, ours, bias=True):
        out[f"{theirs}/w"] = sd[f"{ours}.weight"].T
        if bias:
            out[f"{theirs}/b"] = sd[f"{ours}.bias"]

    def conv(theirs, ours):
        out[f"{theirs}/w"] = sd[f"{ours}.weight"].transpose(2, 1, 0)
        out[f"{theirs}/b"] = sd[f"{ours}.bias"]

    def conv_block(theirs, ours):
        bn = f"{theirs}/_layers/0"
        c = sd[f"{ours}.norm.weight"].shape[0]
        out[f"{bn}/scale"] = sd[f"{ours}.norm.weight"]
        out[f"{bn}/offset"] = sd[f"{ours}.norm.bias"]
        for t, o in (("moving_mean", "running_mean"), ("moving_variance", "running_var")):
            out[f"{bn}/{t}/average"] = sd[f"{ours}.norm.{o}"].reshape(1, 1, c)
            out[f"{bn}/{t}/_hidden"] = sd[f"{ours}.norm.{o}"].reshape(1, 1, c) * 0.5
            out[f"{bn}/{t}/_counter"] = sd[f"{ours}.norm.num_batches_tracked"] * 0 + 7
        conv(f"{theirs}/_layers/2", f"{ours}.conv")

    t = "_trunk/_layers"
    conv(f"{t}/0/_layers/0", "stem.conv")
    conv_block(f"{t}/0/_layers/1/_module", "stem.pointwise.module")
    out[f"{t}/0/_layers/2/_logit_linear/w"] = sd["stem.pool.weight"].T
    for i in range(model.config.num_conv_tower_blocks):
        b = f"{t}/1/_layers/{i}/_layers"
        conv_block(f"{b}/0", f"conv_tower.{i}.conv")
        conv_block(f"{b}/1/_module", f"conv_tower.{i}.pointwise.module")
        out[f"{b}/2/_logit_linear/w"] = sd[f"conv_tower.{i}.pool.weight"].T
    for i in range(model.config.num_transformer_layers):
        b, o = f"{t}/2/_layers/{i}/_layers", f"transformer.{i}"
        out[f"{b}/0/_module/_layers/0/scale"] = sd[f"{o}.mha_norm.weight"]
        out[f"{b}/0/_module/_layers/0/offset"] = sd[f"{o}.mha_norm.bias"]
        a = f"{b}/0/_module/_layers/1"
        for theirs, ours in (("_q_layer", "q"), ("_k_layer", "k"), ("_v_layer", "v"), ("_r_k_layer", "r_k")):
            linear(f"{a}/{theirs}", f"{o}.attention.{ours}", bias=False)
        linear(f"{a}/_embedding_layer", f"{o}.attention.output")
        out[f"{a}/_r_w_bias"] = sd[f"{o}.attention.r_w_bias"]
        out[f"{a}/_r_r_bias"] = sd[f"{o}.attention.r_r_bias"]
        out[f"{b}/1/_module/_layers/0/scale"] = sd[f"{o}.mlp_norm.weight"]
        out[f"{b}/1/_module/_layers/0/offset"] = sd[f"{o}.mlp_norm.bias"]
        linear(f"{b}/1/_module/_layers/1", f"{o}.mlp_linear1")
        linear(f"{b}/1/_module/_layers/4", f"{o}.mlp_linear2")
    conv_block(f"{t}/4/_layers/0", "final_pointwise.conv_block")
    for head in model.config.heads:
        linear(f"_heads/{head}/_layers/0", f"heads.{head}.linear")
    return out


def _write_tf_checkpoint(variables, prefix):
    """A tf.train.Checkpoint(module=...) whose object graph gives exactly these variable paths."""
    tf = pytest.importorskip("tensorflow")
    root = tf.Module()
    for path, value in variables.items():
        node = root
        *parents, leaf = path.split("/")
        for part in parents:
            if not hasattr(node, part):
                setattr(node, part, tf.Module())
            node = getattr(node, part)
        setattr(node, leaf, tf.Variable(value))
    return tf.train.Checkpoint(module=root).write(prefix)


@pytest.mark.slow
def test_sonnet_checkpoint_imports_through_tensorflow_reader(tmp_path):
    pytest.importorskip("tensorflow")
    from enformer_train import Enformer
    from model_helpers import tiny_config

    model = Enformer(tiny_config()).eval()
    randomise_(model)
    prefix = _write_tf_checkpoint(_sonnet_variables(model), str(tmp_path / "sonnet" / "ckpt"))
    assert main(["convert", prefix, str(tmp_path / "w.safetensors")]) == 0
    loaded = load_model(tmp_path / "w.safetensors", target_length=4, sequence_length=1024).eval()
    assert loaded.config.channels == 48 and loaded.config.num_heads == 2 and loaded.config.key_size == 8
    assert loaded.stem.pointwise.module.norm.num_batches_tracked.item() == 7
    x = torch.randint(0, 5, (2, 1024), dtype=torch.uint8)
    with torch.no_grad():
        for head, value in model(x).items():
            torch.testing.assert_close(loaded(x)[head], value)

    variables = _sonnet_variables(model)
    variables.pop("_trunk/_layers/2/_layers/1/_layers/0/_module/_layers/1/_r_r_bias")
    with pytest.raises(UserError, match="_r_r_bias"):
        from_sonnet({k: torch.as_tensor(v) for k, v in variables.items()})


def test_a_sonnet_checkpoint_loads_as_any_saved_model_does(tmp_path):
    """saved.load and saved.model_config take a Sonnet checkpoint prefix as they take a weights file:
    the same tensors as `convert` then load_model."""
    pytest.importorskip("tensorflow")
    from enformer_train import Enformer
    from enformer_train.saved import load, model_config, resolve_saved
    from model_helpers import tiny_config

    model = Enformer(tiny_config()).eval()
    randomise_(model, seed=3)
    prefix = _write_tf_checkpoint(_sonnet_variables(model), str(tmp_path / "sonnet" / "ckpt"))
    assert resolve_saved(prefix)[0] == "sonnet" and resolve_saved(tmp_path / "sonnet")[0] == "sonnet"
    assert main(["convert", prefix, str(tmp_path / "w.safetensors")]) == 0
    converted = load_model(tmp_path / "w.safetensors").state_dict()
    loaded = load(prefix)
    assert loaded.path == prefix and not loaded.model.training
    assert loaded.model.state_dict().keys() == converted.keys()
    for name, value in converted.items():
        torch.testing.assert_close(loaded.model.state_dict()[name], value, rtol=0, atol=0)
    assert model_config(prefix)["channels"] == 48 and model_config(tmp_path / "w.safetensors")["num_heads"] == 2


def test_cli_convert_refuses_an_existing_output_unless_forced(tmp_path, capsys):
    torch.save(_small_state(), tmp_path / "ok.pt")
    (tmp_path / "mine.safetensors").write_bytes(b"my only copy")
    assert main(["convert", str(tmp_path / "ok.pt"), str(tmp_path / "mine.safetensors")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "mine.safetensors: exists; pass --force" in err
    assert (tmp_path / "mine.safetensors").read_bytes() == b"my only copy"
    assert main(["convert", str(tmp_path / "ok.pt"), str(tmp_path / "mine.safetensors"), "--force"]) == 0
    load_model(tmp_path / "mine.safetensors")


def test_cli_convert_says_what_it_wrote_and_takes_target_length_from_the_source(tmp_path, capsys):
    folder = tmp_path / "enformer-official-rough"
    folder.mkdir()
    torch.save(_small_state(), folder / "pytorch_model.bin")
    (folder / "config.json").write_text('{"dim": 48, "target_length": 200}')
    assert main(["convert", str(folder), str(tmp_path / "a.safetensors")]) == 0
    out = capsys.readouterr().out
    model = load_model(tmp_path / "a.safetensors")
    params = sum(p.numel() for p in model.parameters())
    assert model.config.target_length == 200
    assert f"wrote {tmp_path / 'a.safetensors'}: {params:,} parameters; channels 48" in out
    assert f"-> 200 bins of 128 bp (target_length from {folder / 'config.json'})" in out
    torch.save(_small_state(), tmp_path / "sd.pt")
    assert main(["convert", str(tmp_path / "sd.pt"), str(tmp_path / "b.safetensors")]) == 0
    assert "target_length the paper's 896: the source does not record it; give --target-length" in capsys.readouterr().out
    assert main(["convert", str(tmp_path / "sd.pt"), str(tmp_path / "c.safetensors"), "--target-length", "100"]) == 0
    assert load_model(tmp_path / "c.safetensors").config.target_length == 100
    assert "(target_length from --target-length)" in capsys.readouterr().out
