import pytest

from enformer_train.cli import main
from enformer_train.model.info import measure
from model_helpers import tiny_config


@pytest.mark.slow
def test_info_prints_parameters_per_part(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "251,221,292" in out
    for part in ("stem", "conv_tower", "transformer", "final_pointwise", "head human", "head mouse"):
        assert part in out
    assert "forward FLOPs/sample" in out and "training FLOPs/sample" in out
    assert ("attention: torch's scaled_dot_product_attention with the relative positions as a bias on cuda, the "
            "explicit path (softmax of content + shifted relative logits) on cpu") in out


def test_transformer_layer_flops_match_the_formula():
    """One more transformer layer adds exactly its matmul FLOPs (2 per multiply-add)."""
    one, two = measure(tiny_config(num_transformer_layers=1)), measure(tiny_config(num_transformer_layers=2))
    c = tiny_config()
    t, h, k, v, f = 1024 // c.bin_size, c.num_heads, c.key_size, c.value_size, c.num_relative_position_features
    layer = 2 * (
        t * c.channels * (2 * h * k + h * v)     # q, k, v projections
        + (2 * t - 1) * f * h * k                # relative position keys
        + h * t * t * k + h * t * (2 * t - 1) * k  # content and relative logits
        + h * t * t * v                          # weights @ values
        + t * h * v * c.channels                 # output projection
        + 2 * t * c.channels * 2 * c.channels)   # MLP
    assert two["forward_flops"] - one["forward_flops"] == layer
    assert 2.5 < two["training_flops"] / two["forward_flops"] < 3.5


def test_info_units_suit_small_models_and_memory_is_given(tmp_path, capsys):
    (tmp_path / "tiny.yaml").write_text("model:\n  channels: 32\n  num_transformer_layers: 1\n  num_heads: 2\n"
                                        "  key_size: 8\n  num_relative_position_features: 12\n  tower_divisible_by: 8\n"
                                        "  sequence_length: 6144\n  target_length: 16\n  heads: {human: 8}\n")
    assert main(["info", "--config", str(tmp_path / "tiny.yaml")]) == 0
    out = capsys.readouterr().out
    forward = next(line for line in out.splitlines() if line.startswith("forward FLOPs/sample"))
    assert "0.000" not in forward and ("MFLOPs" in forward or "GFLOPs" in forward), forward
    assert "inference" in out and "per sample" in out


def test_inference_peak_is_between_the_largest_activation_and_all_of_them():
    from enformer_train.model.info import inference_bytes

    config = tiny_config(sequence_length=6144, target_length=16)
    peak = inference_bytes(config)
    saved = measure(config)["activation_bytes"]
    assert 6144 * config.channels // 2 * 4 <= peak < saved  # the stem's output, at least; less than training keeps
