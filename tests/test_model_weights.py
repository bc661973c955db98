"""load_weights, the non-strict load that starts fine-tuning, and build_model, the one constructor."""
import re

import pytest
import torch

import enformer_train
from enformer_train import Enformer, build_model
from enformer_train.errors import UserError
from enformer_train.model.weights import load_weights
from model_helpers import randomise_, tiny_config

_HEAD = ("linear.weight", "linear.bias")


def _source(**overrides) -> dict[str, torch.Tensor]:
    model = build_model(tiny_config(**overrides))
    randomise_(model, seed=1)
    return model.state_dict()


def test_same_trunk_other_heads_loads_the_trunk_leaves_new_heads_fresh_and_drops_the_rest():
    source = _source(heads={"human": 5, "mouse": 3, "cow": 2})
    torch.manual_seed(0)
    model = build_model(tiny_config(heads={"human": 5, "mouse": 4, "dog": 2}))
    initial = {k: v.clone() for k, v in model.state_dict().items()}

    report = load_weights(model, source, where="pretrained.safetensors")

    trunk = [k for k in initial if not k.startswith("heads.")]
    assert len(trunk) == len(source) - 6
    assert report["loaded"] == trunk + [f"heads.human.{p}" for p in _HEAD]
    # mouse has 4 tracks here and 3 in the source; dog is new; cow only in the source
    assert report["fresh"] == [f"heads.{h}.{p}" for h in ("mouse", "dog") for p in _HEAD]
    assert report["dropped"] == [f"heads.{h}.{p}" for h in ("mouse", "cow") for p in _HEAD]
    state = model.state_dict()
    for name in report["loaded"]:
        assert torch.equal(state[name], source[name]), name
    for name in report["fresh"]:
        assert torch.equal(state[name], initial[name]), name
    assert state["heads.mouse.linear.weight"].shape == (4, 96)
    assert state["stem.pointwise.module.norm.num_batches_tracked"].item() == 0  # a buffer, loaded as it is


def test_a_trunk_tensor_of_another_shape_is_an_error_naming_it_and_both_shapes():
    source = _source(stem_kernel_size=15)
    model = build_model(tiny_config(stem_kernel_size=9))
    expected = "pretrained.safetensors: tensor stem.conv.weight has shape (24, 4, 15), the model needs (24, 4, 9)"
    with pytest.raises(UserError, match=re.escape(expected)):
        load_weights(model, source, where="pretrained.safetensors")


def test_a_trunk_tensor_missing_from_the_source_is_an_error_naming_it():
    source = _source()
    del source["transformer.1.attention.r_r_bias"]
    model = build_model(tiny_config())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UserError, match=r"^weights: no tensor transformer\.1\.attention\.r_r_bias; the trunks differ"):
        load_weights(model, source)
    # checked before anything is copied: the tensors that come before the missing one are untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_build_model_returns_the_configured_model():
    config = tiny_config(num_transformer_layers=3, pooling="max", heads={"human": 7})
    torch.manual_seed(0)
    model = build_model(config)
    assert type(model) is Enformer and model.config is config
    assert len(model.transformer) == 3 and len(model.conv_tower) == config.num_conv_tower_blocks
    assert [block.conv.conv.out_channels for block in model.conv_tower] == config.tower_filters
    assert {name: head.linear.out_features for name, head in model.heads.items()} == {"human": 7}
    assert not any(name.endswith("pool.weight") for name in model.state_dict())  # max pooling has no weights
    # the same initialisation as the class itself, from the same seed
    torch.manual_seed(0)
    reference = Enformer(config)
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name
    # without memory on the meta device, as load_model builds before assigning the tensors
    with torch.device("meta"):
        assert all(p.is_meta for p in build_model(config).parameters())
    assert enformer_train.build_model is enformer_train.model.build_model
