"""The two attention paths (explicit, and torch's scaled_dot_product_attention with the shifted
relative logits as a bias) compute the same function: forward and every gradient, float32,
dropout off. On the CPU the sdpa path runs torch's math backend; CUDA's kernels are held to the
same float64 reference in test_cuda.py."""
from __future__ import annotations

import pytest
import torch

from enformer_train import Enformer, EnformerConfig
from enformer_train.model.attention import MultiheadAttention, attention_paths, set_attention_path
from model_helpers import no_dropout, randomise_, tiny_config


def _gradients(module: torch.nn.Module, x: torch.Tensor, path: str) -> tuple[torch.Tensor, dict]:
    set_attention_path(module, path)
    x = x.clone().requires_grad_(True)
    out = module(x)
    out = out if isinstance(out, torch.Tensor) else out["human"]
    weights = torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype).view(out.shape)
    (out * weights).sum().backward()
    grads = {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}
    grads["input"] = x.grad.clone()
    module.zero_grad(set_to_none=True)
    return out.detach(), grads


def _assert_same(reference: torch.Tensor, other: torch.Tensor, what: str, rtol: float) -> None:
    """Equal to `rtol` relative: the norm of the difference within rtol of the reference's norm."""
    scale = reference.norm().item()
    assert scale > 0, what
    diff = (reference - other).norm().item()
    assert diff <= rtol * scale, f"{what}: differs by {diff:.3g} (norm {scale:.3g})"


def _compare(module: torch.nn.Module, x: torch.Tensor, rtol: float) -> None:
    out_explicit, grads_explicit = _gradients(module, x, "explicit")
    out_sdpa, grads_sdpa = _gradients(module, x, "sdpa")
    _assert_same(out_explicit, out_sdpa, "output", rtol)
    assert grads_explicit.keys() == grads_sdpa.keys()
    for name in grads_explicit:
        _assert_same(grads_explicit[name], grads_sdpa[name], f"gradient of {name}", rtol)


@pytest.mark.parametrize("config", [
    tiny_config(),
    # the quarter-width model's layer (channels 384, 8 heads, value size 48) at 196,608 bp: 1,536 positions
    pytest.param(EnformerConfig(channels=384, num_transformer_layers=11), marks=pytest.mark.slow),
], ids=["tiny", "quarter-196608bp"])
def test_attention_layer_paths_agree(config):
    config = no_dropout(config)
    torch.manual_seed(0)
    layer = MultiheadAttention(config).train()
    randomise_(layer)
    positions = config.sequence_length // config.bin_size
    _compare(layer, torch.randn(1, positions, config.channels), rtol=1e-5)


def test_whole_model_paths_agree():
    """In float64: through the whole network float32 round-off alone separates the paths by more
    than 1e-5 in the gradient of r_r_bias, a sum over every query and distance (measured: explicit
    3.1e-5 and sdpa 1.8e-5 from float64, 1.5e-5 from each other), so the exact construction is the
    test. Evaluation mode: in training mode the biases before each batch norm get only round-off
    as gradient (a per-channel constant that the batch's mean removes), nothing to compare."""
    torch.manual_seed(0)
    model = Enformer(tiny_config()).eval()
    randomise_(model)
    x = torch.nn.functional.one_hot(torch.randint(0, 4, (2, 1024)), 4).double()
    _compare(model.double(), x, rtol=1e-12)


def test_auto_takes_the_explicit_path_on_the_cpu_and_a_path_is_checked():
    model = Enformer(tiny_config())
    assert attention_paths(model, torch.device("cpu")) == {"explicit"}
    assert attention_paths(model, torch.device("cuda")) == {"sdpa"}
    set_attention_path(model, "sdpa")
    assert attention_paths(model, torch.device("cpu")) == {"sdpa"}
    with pytest.raises(ValueError, match="attention path 'flash': expected one of auto, explicit, sdpa"):
        set_attention_path(model, "flash")
