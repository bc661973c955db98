"""The model and the trainer's step on a CUDA GPU (skipped where there is none; CI has none).

Run on a GPU machine with `python -m pytest tests/test_cuda.py`; benchmarks/gpu.py measures speed.
"""
import pytest
import torch

from enformer_train import Enformer
from enformer_train.model.attention import set_attention_path
from enformer_train.model.enformer import one_hot
from enformer_train.train.loss import poisson_loss
from model_helpers import no_dropout, randomise_, tiny_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.detach().double().cpu() - ref.detach().double().cpu()).norm() / ref.detach().double().norm())


def _forward_backward(model: Enformer, codes: torch.Tensor, device: str, dtype: torch.dtype, autocast: bool):
    model = model.to(device=device, dtype=dtype)
    model.zero_grad(set_to_none=True)
    with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
        out = model(one_hot(codes.to(device), dtype))
    weights = {h: torch.linspace(0.5, 1.5, o.shape[-1], device=device) for h, o in out.items()}
    sum(((o.float() * weights[h]).sum() for h, o in out.items())).backward()
    grads = torch.cat([p.grad.reshape(-1).double().cpu() for p in model.parameters() if p.grad is not None])
    return {h: o.detach().double().cpu() for h, o in out.items()}, grads


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))


@pytest.mark.parametrize("path", ["sdpa", "explicit"])
def test_gpu_float32_matches_float64_cpu(path):
    """Outputs and every gradient of a randomised model in training mode (batch statistics) on the
    GPU in float32, TF32 off, against float64 on the CPU: the CUDA paths compute the same function,
    with either attention path (sdpa, CUDA's default: the memory-efficient kernel with a bias)."""
    torch.manual_seed(0)
    model = Enformer(no_dropout(tiny_config(sequence_length=2048, target_length=8))).train()
    randomise_(model, seed=1)
    set_attention_path(model, path)
    codes = torch.randint(0, 4, (2, 2048), generator=torch.Generator().manual_seed(2))
    ref_out, ref_grad = _forward_backward(model, codes, "cpu", torch.float64, False)
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        out, grad = _forward_backward(model, codes, "cuda", torch.float32, False)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    for head in ref_out:
        assert _rel(out[head], ref_out[head]) < 1e-4, head
    assert _rel(grad, ref_grad) < 1e-3


@pytest.mark.parametrize("path", ["sdpa", "explicit"])
def test_gpu_bf16_autocast_close_to_float64_cpu(path):
    """The same under bf16 autocast (the trainer's precision on GPUs), from the model's own
    initialisation: outputs within bf16 round-off, gradients pointing the same way (conv weights
    before a batch norm sum many bf16 products that cancel: their relative error is ~20% even on
    the CPU, so the bound is on the direction)."""
    torch.manual_seed(0)
    model = Enformer(no_dropout(tiny_config(sequence_length=2048, target_length=8))).train()
    set_attention_path(model, path)
    codes = torch.randint(0, 4, (2, 2048), generator=torch.Generator().manual_seed(2))
    ref_out, ref_grad = _forward_backward(model, codes, "cpu", torch.float64, False)
    out, grad = _forward_backward(model, codes, "cuda", torch.float32, True)
    for head in ref_out:
        assert _rel(out[head], ref_out[head]) < 5e-2, head
    assert torch.isfinite(grad).all()
    assert _cosine(grad, ref_grad) > 0.9


def test_bf16_training_steps_lower_the_loss_on_a_fixed_batch():
    """The training step of the trainer's recipe (bf16 autocast, Poisson loss, Adam) on the GPU:
    every step finite, and 30 steps on one batch lower its loss."""
    torch.manual_seed(0)
    model = Enformer(tiny_config(sequence_length=2048, target_length=8)).cuda().train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    codes = torch.randint(0, 4, (4, 2048), device="cuda")
    targets = {h: torch.poisson(torch.full((4, 8, n), 2.0, device="cuda")) for h, n in model.config.heads.items()}
    losses = []
    for _ in range(30):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(codes)
        loss = sum(poisson_loss(out[h].float(), targets[h]) for h in out)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.8 * losses[0]
