"""torch.compile: the training step traces as one graph (no graph breaks), and the trainer's
compiled run on 2 gloo ranks equals the eager one without recompiling after its second step."""
from __future__ import annotations

import copy
import dataclasses
import os
import platform
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from enformer_train import Enformer, EnformerConfig
from enformer_train.compiling import KEEP_FREED_SWITCH, MIN_TORCH, compile_model, torch_version
from enformer_train.train.metrics_log import read_metrics
from enformer_train.train.loss import poisson_loss
from model_helpers import no_dropout, tiny_config
from train_helpers import overrides, run

# The trainer compiles the model and calls backward on the loss, which AOTAutograd compiles from the
# forward's one graph. Newer torch can also trace the backward call itself into the graph (dynamo's
# trace_autograd_ops): checked too, without checkpointing, whose recomputation that mode supports in
# one backward region only (each custom autograd function's backward makes one).
_TRACES_BACKWARD = hasattr(torch._dynamo.config, "trace_autograd_ops")


def _explain_step(config: EnformerConfig, backward: bool, autocast: bool = False):
    torch.manual_seed(0)
    model = Enformer(config).train()
    codes = torch.randint(0, 5, (2, config.sequence_length), dtype=torch.uint8)
    target = torch.rand(2, config.target_length, config.heads["human"])

    def step(codes, target):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            pred = model(codes, head="human")
        loss = poisson_loss(pred, target)
        if backward:
            loss.backward()
        return loss.detach()

    torch._dynamo.reset()
    with torch._dynamo.config.patch(**({"trace_autograd_ops": True} if backward else {})):
        explanation = torch._dynamo.explain(step)(codes, target)
    return model, explanation


_CONFIGS = [
    tiny_config(),
    # the quarter-width model (channels 384, 11 layers, 8 heads) on a shorter input: the width and
    # depth decide what is traced, the length only the shapes
    EnformerConfig(channels=384, num_transformer_layers=11, sequence_length=12_288, target_length=64),
]


@pytest.mark.slow
@pytest.mark.parametrize("backward", [False, pytest.param(True, marks=pytest.mark.skipif(
    not _TRACES_BACKWARD, reason="this torch cannot trace a backward call"))], ids=["forward-loss", "with-backward"])
@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "gradient-checkpointing"])
@pytest.mark.parametrize("config", _CONFIGS, ids=["tiny", "quarter"])
def test_training_step_traces_whole(config, checkpointing, backward):
    if checkpointing and backward:
        pytest.skip("trace_autograd_ops recomputes one backward region only (see above)")
    config = dataclasses.replace(config, gradient_checkpointing=checkpointing)
    assert config.cross_replica_batchnorm  # on, as the trainer runs it (one rank: nothing to exchange)
    model, explanation = _explain_step(config, backward)
    reasons = [b.reason.splitlines()[0] for b in explanation.break_reasons]
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1, reasons
    # the step did run: every batch norm counted the batch once
    assert all(int(m.num_batches_tracked) == 1 for m in model.modules() if hasattr(m, "num_batches_tracked"))
    if backward:
        assert model.stem.conv.weight.grad is not None and model.stem.conv.weight.grad.abs().sum() > 0


@pytest.mark.slow
@pytest.mark.parametrize("backward", [False, pytest.param(True, marks=pytest.mark.skipif(
    not _TRACES_BACKWARD, reason="this torch cannot trace a backward call"))], ids=["forward-loss", "with-backward"])
def test_bf16_autocast_training_step_traces_whole(backward):
    """Under bf16 autocast the batch norms take bf16 activations (model/ops.py HalfBatchNormFunction)."""
    model, explanation = _explain_step(tiny_config(), backward, autocast=True)
    reasons = [b.reason.splitlines()[0] for b in explanation.break_reasons]
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1, reasons
    assert all(int(m.num_batches_tracked) == 1 for m in model.modules() if hasattr(m, "num_batches_tracked"))


@pytest.mark.slow
def test_compiled_checkpointed_model_equals_eager():
    """Gradient checkpointing compiled (AOTAutograd's recomputation, no inductor: the same graphs
    the trainer's compile lowers): two steps give eager's loss, gradients and moving averages, each
    batch counted once (eager freezes them in its recomputation; compiled, nothing replays them)."""
    torch.manual_seed(0)
    config = dataclasses.replace(no_dropout(tiny_config()), gradient_checkpointing=True)
    eager = Enformer(config).train()
    compiled = copy.deepcopy(eager)
    forward = torch.compile(compiled, backend="aot_eager")
    codes = torch.randint(0, 5, (2, config.sequence_length), dtype=torch.uint8)
    target = torch.rand(2, config.target_length, config.heads["human"])
    for _ in range(2):
        losses = []
        for model, call in ((eager, eager), (compiled, forward)):
            model.zero_grad(set_to_none=True)
            loss = poisson_loss(call(codes, head="human"), target)
            loss.backward()
            losses.append(loss.detach())
        torch.testing.assert_close(losses[1], losses[0], rtol=1e-6, atol=0)
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-6, msg=name)
    for (name, a), b in zip(eager.named_buffers(), compiled.buffers()):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7, msg=name)
    assert int(compiled.stem.pointwise.module.norm.num_batches_tracked) == 2


_OLD_TORCH = torch_version() < MIN_TORCH


@pytest.mark.skipif(not _OLD_TORCH, reason="torch 2.5 and newer compile")
def test_compile_on_torch_2_4_is_refused_in_one_line(tmp_path):
    proc = run(1, overrides(tmp_path / "run", 2, 4, "train.compile=true"), check=False)
    assert proc.returncode != 0 and not (tmp_path / "run").exists()  # before the run folder is touched
    assert proc.stderr.strip().splitlines()[-1].endswith(
        "train.compile=true needs torch 2.5 or newer (this is " + torch.__version__ + ": its inductor fails on this "
        "model, 'Invalid NaN comparison' in its value ranges); set train.compile=false or upgrade torch")


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.skipif(_OLD_TORCH, reason="train.compile needs torch 2.5 or newer")
def test_compiled_training_on_two_ranks_equals_eager_and_compiles_once(tmp_path):
    """20 steps of train.compile=true against eager on 2 gloo ranks, in float64 (train.precision=fp64:
    float32 round-off in the gradients that are exactly zero, amplified by Adam's first steps, would
    decide the comparison; test_train.py says why). Measured: losses within 1e-14 in float64; in
    float32 they drifted to 7e-5 apart by step 20."""
    runs = {}
    for name, extra in (("eager", []), ("compiled", ["train.compile=true"])):
        proc = run(2, overrides(tmp_path / name, 20, 4, "train.precision=fp64", *extra))
        runs[name] = [m for m in read_metrics(tmp_path / name) if "loss/human" in m]
    eager, compiled = runs["eager"], runs["compiled"]
    assert [m["step"] for m in compiled] == [m["step"] for m in eager] == list(range(1, 21))
    for key in ("loss/human", "loss/mouse"):
        np.testing.assert_allclose([m[key] for m in compiled], [m[key] for m in eager], rtol=1e-10, err_msg=key)
    # the first step compiled (said and logged); nothing compiled again after the second
    assert compiled[0]["compile_s"] > 0 and "compile_s" not in eager[0]
    assert "torch.compile compiled the training step in" in proc.stderr
    assert "compiled on a CPU: glibc keeps freed memory" in proc.stderr  # said by rank 0 only
    assert proc.stderr.count("glibc keeps freed memory") == 1
    assert [m["recompiles"] for m in compiled[2:]] == [0] * 18


_FREE_A_BLOCK = """
import os, sys, torch
from enformer_train.compiling import keep_freed_memory
kept = keep_freed_memory(torch.device(sys.argv[1]))
def resident():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
block = torch.ones(32 * 2**20)  # 128 MiB, over glibc's largest mmap threshold (32 MiB)
before = resident()
del block
print(kept, (before - resident()) / 2**20)
"""


def _free_a_block(device: str = "cpu", **env: str) -> tuple[bool, float]:
    """Whether keep_freed_memory(device) said it acted, and the MiB a freed 128-MiB block gave back."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", _FREE_A_BLOCK, device], env={**environment, **env},
                         capture_output=True, text=True, check=True).stdout.split()
    return out[0] == "True", float(out[1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_a_compiled_cpu_run_keeps_freed_memory_unless_told_not_to():
    kept, returned = _free_a_block()
    assert kept and returned < 8  # the block stays in the process for the next step
    for device, env in (("cpu", {KEEP_FREED_SWITCH: "0"}),  # the user said no
                        ("cpu", {"MALLOC_TRIM_THRESHOLD_": "131072"}),  # the user set glibc's own variables
                        ("cuda", {})):  # a GPU's activations are not glibc's
        kept, returned = _free_a_block(device, **env)
        assert not kept and 120 < returned < 136, (device, env)  # glibc's default: the block goes back


# A buffer the compiled code allocates: empty_strided_cpu((sizes), (strides), dtype)
_ALLOCATION_4D = re.compile(r"empty_strided_cpu\(\((\d+), (\d+), (\d+), (\d+)\), \((\d+), (\d+), (\d+), (\d+)\)")


@pytest.mark.slow
@pytest.mark.skipif(_OLD_TORCH, reason="inductor compiles this model on torch 2.5 and newer")
def test_compiled_attention_keeps_its_tensors_in_their_own_order():
    """compile_model's inductor leaves attention's [batch, heads, T, T] tensors (the dropout mask
    kept for backward, the weights) row-major: plain torch.compile gives them channels-last strides
    (heads fastest) because the graph holds convolutions, which made writing the mask alone cost
    180 ms a layer at quarter width (compiling.COMPILE_OPTIONS)."""
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    torch.manual_seed(0)
    config = tiny_config()
    model = Enformer(config).train()
    codes = torch.randint(0, 5, (2, config.sequence_length), dtype=torch.uint8)
    target = torch.rand(2, config.target_length, config.heads["human"])
    compiled = compile_model(model)
    loss, code = run_and_get_code(lambda: poisson_loss(compiled(codes, head="human"), target))  # the forward graph
    allocations = [tuple(map(int, m.groups())) for text in code for m in _ALLOCATION_4D.finditer(text)]
    heads, positions = config.num_heads, config.sequence_length // config.bin_size
    attention = [a for a in allocations if a[:4] == (2, heads, positions, positions)]
    assert attention  # the mask and the weights are allocated by the compiled code
    assert all(a[4:] == (heads * positions**2, positions**2, positions, 1) for a in attention), attention
    assert torch.isfinite(loss)
