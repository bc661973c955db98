import math

import numpy as np
import pytest
import torch

from enformer_train import Enformer, EnformerConfig, load_model, save_model
from enformer_train.errors import UserError
from enformer_train.model.attention import positional_features
from enformer_train.model.ops import AddRelativeLogits, dropout_mask
from model_helpers import no_dropout, randomise_, tiny_config


def test_full_model_has_the_published_parameter_count():
    with torch.device("meta"):
        model = Enformer(EnformerConfig())
    assert sum(p.numel() for p in model.parameters()) == 251_221_292
    assert EnformerConfig().tower_filters == [768, 896, 1024, 1152, 1280, 1536]


def _reference_features(seq_length: int, num_features: int) -> np.ndarray:
    """The reference's three bases, written independently in float64 with math.lgamma."""
    per = num_features // 6
    d = np.abs(np.arange(-seq_length + 1, seq_length, dtype=np.float64))
    max_range = math.log(seq_length) / math.log(2.0)
    half_life = 2.0 ** np.linspace(3.0, max_range, per)
    exponential = np.exp(-math.log(2.0) / half_life[None] * d[:, None])
    widths = 2.0 ** np.arange(1, per + 1) - 1
    central = (widths[None] > d[:, None]).astype(np.float64)
    stddev, start = seq_length / (2 * per), seq_length / per
    mean = np.linspace(start, seq_length, per)
    conc, rate = (mean / stddev) ** 2, mean / stddev**2
    log_norm = np.array([math.lgamma(c) for c in conc]) - conc * np.log(rate)
    gamma = np.zeros((len(d), per))
    for i, x in enumerate(d):
        for j in range(per):
            log_p = -math.inf if x == 0 else (conc[j] - 1) * math.log(x) - rate[j] * x - log_norm[j]
            gamma[i, j] = math.exp(log_p) + 1e-8
    gamma /= gamma.max(axis=0, keepdims=True)
    sym = np.concatenate([exponential, central, gamma], axis=1)
    sign = np.sign(np.arange(-seq_length + 1, seq_length))[:, None]
    return np.concatenate([sym, sign * sym], axis=1)


@pytest.mark.parametrize("seq_length,num_features", [(1536, 192), (896, 48), (37, 12), (3, 6)])
def test_positional_features_match_float64_reference(seq_length, num_features):
    ours = positional_features(seq_length, num_features).numpy()
    ref = _reference_features(seq_length, num_features)
    assert ours.shape == (2 * seq_length - 1, num_features)
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12)
    # the row of distance 0: exponential 1, every central mask on, gamma at its floor, signed half 0
    centre = ours[seq_length - 1]
    per = num_features // 6
    assert np.all(centre[:per] == 1) and np.all(centre[per:2 * per] == 1)
    assert np.all(centre[3 * per:] == 0)


def _tf_relative_shift(x: torch.Tensor) -> torch.Tensor:
    """The reference's pad-reshape-slice shift, step by step."""
    x = torch.cat([torch.zeros_like(x[..., :1]), x], dim=-1)
    b, h, t1, t2 = x.shape
    x = x.reshape(b, h, t2, t1)[:, :, 1:, :]
    x = x.reshape(b, h, t1, t2 - 1)
    return x[..., : (t2 + 1) // 2]


def test_relative_shift_matches_reference_and_its_gradient():
    t = 7
    rel = torch.randn(2, 3, t, 2 * t - 1, dtype=torch.float64, requires_grad=True)
    content = torch.randn(2, 3, t, t, dtype=torch.float64, requires_grad=True)
    ours = AddRelativeLogits.apply(content, rel)
    ref = content + _tf_relative_shift(rel)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    # query i, key j sees relative feature index j - i + t - 1, i.e. distance j - i
    assert ours[0, 0, 2, 5] == content[0, 0, 2, 5] + rel[0, 0, 2, 5 - 2 + t - 1]
    torch.autograd.gradcheck(AddRelativeLogits.apply, (content, rel))


def test_codes_and_one_hot_give_the_same_output_and_n_is_zero():
    torch.manual_seed(0)
    model = Enformer(tiny_config()).eval()
    randomise_(model)
    codes = torch.randint(0, 5, (2, 1024), dtype=torch.uint8)
    one_hot = torch.zeros(2, 1024, 4)
    for base in range(4):
        one_hot[..., base] = (codes == base).float()
    with torch.no_grad():
        a, b = model(codes), model(one_hot)
        human = model(codes, head="human")
    assert set(a) == {"human", "mouse"}
    assert a["human"].shape == (2, 4, 5) and a["mouse"].shape == (2, 4, 3)
    torch.testing.assert_close(a["human"], b["human"])
    torch.testing.assert_close(human, a["human"])
    assert (a["human"] > 0).all()  # softplus


def test_crop_is_symmetric_and_odd_or_short_inputs_are_refused():
    model = Enformer(tiny_config(target_length=4)).eval()
    x = torch.arange(10).view(1, 10, 1).float()
    assert model.crop(x).flatten().tolist() == [3, 4, 5, 6]
    with pytest.raises(ValueError, match="must be even"):
        model.crop(torch.zeros(1, 9, 1))
    with pytest.raises(ValueError, match="must be even"):
        model.crop(torch.zeros(1, 2, 1))
    with pytest.raises(ValueError, match="multiple of the bin size"):
        model(torch.zeros(1, 1000, dtype=torch.uint8))
    # longer inputs work: 12 bins, 4 kept
    with torch.no_grad():
        assert model(torch.zeros(1, 12 * 128, dtype=torch.uint8), head="mouse").shape == (1, 4, 3)


def test_batchnorm_moving_averages_are_debiased_as_sonnet():
    from enformer_train.model.batchnorm import CrossReplicaBatchNorm

    bn = CrossReplicaBatchNorm(3, decay=0.9)
    xs = [torch.randn(4, 3, 5) * (i + 1) + i for i in range(3)]
    hidden_m, hidden_v = torch.zeros(3), torch.zeros(3)
    for i, x in enumerate(xs, start=1):
        bn(x)
        var, mean = torch.var_mean(x, dim=(0, 2), correction=0)
        hidden_m = hidden_m - (hidden_m - mean) * 0.1
        hidden_v = hidden_v - (hidden_v - var) * 0.1
        torch.testing.assert_close(bn.running_mean, hidden_m / (1 - 0.9**i))
        torch.testing.assert_close(bn.running_var, hidden_v / (1 - 0.9**i))
    assert bn.num_batches_tracked.item() == 3


@pytest.mark.slow
def test_gradient_checkpointing_gives_same_gradients_and_counts_each_batch_once():
    torch.manual_seed(0)
    base = Enformer(no_dropout(tiny_config())).train()
    randomise_(base)
    ckpt = Enformer(no_dropout(tiny_config(gradient_checkpointing=True))).train()
    ckpt.load_state_dict(base.state_dict())
    x = torch.randint(0, 5, (2, 1024), dtype=torch.uint8)
    for model in (base, ckpt):
        out = model(x)
        (out["human"].sum() + 2 * out["mouse"].sum()).backward()
    for (name, p), q in zip(base.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=name)
    for (name, b), c in zip(base.named_buffers(), ckpt.buffers()):
        torch.testing.assert_close(c, b, msg=name)
    assert ckpt.stem.pointwise.module.norm.num_batches_tracked.item() == 1


def test_bf16_autocast_keeps_heads_in_float32():
    model = Enformer(tiny_config()).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randint(0, 5, (2, 1024), dtype=torch.uint8))
    assert out["human"].dtype == torch.float32


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(1)
    model = Enformer(tiny_config()).eval()
    randomise_(model)
    save_model(model, tmp_path / "w.safetensors")
    loaded = load_model(tmp_path / "w.safetensors").eval()
    assert loaded.config == model.config
    x = torch.randint(0, 5, (1, 1024), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)["human"], model(x)["human"], rtol=0, atol=0)
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(UserError, match="bad.safetensors"):
        load_model(tmp_path / "bad.safetensors")


def test_config_errors_name_the_option():
    with pytest.raises(UserError, match="value_size"):
        EnformerConfig(channels=48, num_heads=2, value_size=10)
    with pytest.raises(UserError, match="pooling"):
        EnformerConfig(pooling="mean")
    with pytest.raises(UserError, match="unknown model option"):
        EnformerConfig.from_dict({"chanels": 3})
    # channels 192 with the default tower_divisible_by 128: the tower would end with 256 filters
    with pytest.raises(UserError, match="tower_divisible_by 128"):
        EnformerConfig(channels=192)


@pytest.mark.slow
def test_fused_functions_have_exact_gradients():
    """The hand-written backward passes (batch norm + GELU, softmax pooling, softmax + dropout +
    matmul) against finite differences in float64."""
    from enformer_train.model.ops import AttendFunction, BatchNormFunction, SoftmaxPoolingFunction

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 6, dtype=torch.float64, generator=g, requires_grad=True)
    w = (torch.rand(4, dtype=torch.float64, generator=g) + 0.5).requires_grad_()
    b = torch.randn(4, dtype=torch.float64, generator=g, requires_grad=True)
    for gelu in (False, True):
        torch.autograd.gradcheck(lambda x, w, b: BatchNormFunction.apply(x, w, b, 1e-5, gelu, 1)[0], (x, w, b))
    # and against the plain composition of torch ops
    y = BatchNormFunction.apply(x, w, b, 1e-5, True, 1)[0]
    z = torch.nn.functional.batch_norm(x, None, None, w, b, training=True, eps=1e-5)
    torch.testing.assert_close(y, torch.sigmoid(1.702 * z) * z)

    pool_w = torch.randn(4, 4, dtype=torch.float64, generator=g, requires_grad=True)
    torch.autograd.gradcheck(SoftmaxPoolingFunction.apply, (x, pool_w))
    # a softmax over each pair of positions, per channel
    logits = torch.matmul(pool_w, x).view(3, 4, 3, 2)
    expected = (x.view(3, 4, 3, 2) * logits.softmax(-1)).sum(-1)
    torch.testing.assert_close(SoftmaxPoolingFunction.apply(x, pool_w), expected)

    logits = torch.randn(2, 3, 5, 5, dtype=torch.float64, generator=g, requires_grad=True)
    v = torch.randn(2, 3, 5, 4, dtype=torch.float64, generator=g, requires_grad=True)
    torch.autograd.gradcheck(lambda l, v: AttendFunction.apply(l, v, 0.0, True)[0], (logits, v))

    def seeded(l, v):
        torch.manual_seed(5)
        return AttendFunction.apply(l, v, 0.3, True)[0]

    torch.autograd.gradcheck(seeded, (logits, v))
    torch.manual_seed(5)
    mask = ~dropout_mask(logits, 0.3)
    expected = torch.matmul(logits.softmax(-1) * mask / 0.7, v)
    torch.testing.assert_close(seeded(logits, v), expected)
    assert 0 < (~mask).sum() < mask.numel()


@pytest.mark.parametrize("rate", [0.0, 0.3])
def test_attend_backward_under_autocast_with_a_float32_softmax(rate):
    """CUDA's autocast keeps the softmax in float32 and runs the product with v in bf16, so the
    backward receives a bf16 gradient beside a float32 softmax (found on the first GPU run: the
    training step failed with 'expected scalar type Float but found BFloat16'). The same dtypes are
    set up here on the CPU; gradients must match float32 autograd to bf16 precision."""
    from enformer_train.model.ops import attend

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 16, 16, generator=g, requires_grad=True)  # float32, as the softmax sees it
    v = torch.randn(2, 3, 16, 8, generator=g).to(torch.bfloat16).requires_grad_()
    grad = torch.randn(2, 3, 16, 8, generator=g)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attend(logits, v, rate, True)
    assert out.dtype == torch.bfloat16
    out.backward(grad.to(torch.bfloat16))

    torch.manual_seed(1)
    keep = ~dropout_mask(logits, rate) if rate else torch.ones(2, 3, 16, 16, dtype=torch.bool)
    ref_logits = logits.detach().clone().requires_grad_()
    ref_v = v.detach().float().requires_grad_()
    (torch.matmul(ref_logits.softmax(-1) * keep / (1 - rate), ref_v) * grad).sum().backward()
    for got, ref in ((logits.grad, ref_logits.grad), (v.grad, ref_v.grad)):
        assert got.dtype == (torch.float32 if got is logits.grad else torch.bfloat16)
        assert float((got.float() - ref).norm() / ref.norm()) < 2e-2
