"""torch.compile for the commands: the torch it needs, the options it compiles this model with, a
model compiled for inference, and glibc keeping freed memory for a compiled model on a CPU."""
from __future__ import annotations

import ctypes
import os
import platform

import torch
from torch import nn

from .errors import UserError

MIN_TORCH = (2, 5)


def torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int(minor)


def require_compile(option: str, instead: str) -> None:
    """Refuse `option` in one line on a torch whose inductor cannot compile this model."""
    if torch_version() < MIN_TORCH:
        raise UserError(f"{option} needs torch {'.'.join(map(str, MIN_TORCH))} or newer (this is {torch.__version__}: "
                        f"its inductor fails on this model, 'Invalid NaN comparison' in its value ranges); {instead}")


# Inductor gives every 4-D tensor of a graph that holds a convolution channels-last strides where a
# convolution's input or output depends on it (on a CPU with oneDNN: whenever there is a convolution),
# which pays for 2-D convolutions. This model's convolutions are 1-D; its 4-D tensors are attention's
# [batch, heads, T, T], which feed matrix products only, and were written heads-fastest: in a
# training step the dropout mask was transposed through 8 x 8 blocks of bytes (180 ms a layer of the
# quarter-width model with AVX2's kernels, against 15 ms for the same kernel unordered).
COMPILE_OPTIONS = {"layout_optimization": False}


def compile_model(model: nn.Module, **kwargs) -> nn.Module:
    """torch.compile(model, **kwargs) with this project's COMPILE_OPTIONS (the trainer, the commands'
    --compile and the benchmarks compile through it)."""
    return torch.compile(model, options=dict(COMPILE_OPTIONS), **kwargs)


KEEP_FREED_BYTES = 2**31 - 1  # glibc's mmap threshold: blocks up to 2 GiB come from (and go back to) its heap
KEEP_FREED_SWITCH = "ENFORMER_TRAIN_KEEP_FREED_MEMORY"  # 0: leave glibc as it is
_GLIBC_MALLOC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
_NEVER = -1  # mallopt(3): a trim threshold of -1 turns trimming off


def keep_freed_memory(device: torch.device) -> bool:
    """For a compiled model on a CPU: glibc keeps the blocks a step frees for the next step.

    By default glibc returns every freed block over 32 MiB to the kernel, which gives it back as
    fresh pages, each faulted in and zeroed 4 KiB at a time: most of a step's activations. Here
    blocks up to 2 GiB come from glibc's heap and the heap is never trimmed. With both thresholds
    at 2 GiB the compiled quarter-width training step took 23-39% less time at the same peak memory,
    compiled inference of the paper's model 14-23% less at a 42-52% higher peak; that inference
    still took 0.8 million faults a step, its heap's free top passing 2 GiB and being trimmed several
    times a step, and without trimming it takes none (benchmarks/RESULTS.md). An eager step's peak
    grows by 67-76%, so eager runs are left alone. Nothing changes off Linux's glibc, where the user
    set glibc's own variables (their choice stands), or with ENFORMER_TRAIN_KEEP_FREED_MEMORY=0.
    True when glibc now keeps freed memory.
    """
    if device.type != "cpu" or os.environ.get(KEEP_FREED_SWITCH, "1") == "0":
        return False
    if any(v in os.environ for v in _GLIBC_MALLOC_VARIABLES) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, KEEP_FREED_BYTES) and libc.mallopt(_M_TRIM_THRESHOLD, _NEVER))
    except (OSError, AttributeError):
        return False


class CompiledForInference(nn.Module):
    """An evaluation-mode model under torch.compile with static shapes: a batch smaller than the
    largest so far is padded with N windows to that size and its outputs cut back (evaluation-mode
    batch norm treats every window on its own, so the padding changes nothing), so a run compiles
    one graph a head (once more if a larger batch comes). Dynamic shapes are never tried: dynamo
    would make the batch, and after other calls in the process also the length, symbolic, and
    inductor's simplification of the model's index arithmetic then ran for many minutes.
    Attributes (config, heads) are the model's."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        parameter = next(model.parameters(), None)
        keep_freed_memory(parameter.device if parameter is not None else torch.device("cpu"))
        self.compiled = compile_model(model, dynamic=False)
        self.batch = 0

    @property
    def config(self):
        return self.model.config

    @property
    def heads(self):
        return self.model.heads

    def forward(self, x: torch.Tensor, head: str | None = None):
        if self.model.training:
            raise RuntimeError("CompiledForInference runs evaluation-mode models only (padding would change batch norm)")
        n = x.shape[0]
        self.batch = max(self.batch, n)
        if n < self.batch:
            fill = 4 if not x.is_floating_point() else 0  # N: code 4, or an all-zero one-hot row
            x = torch.cat([x, x.new_full((self.batch - n, *x.shape[1:]), fill)])
        out = self.compiled(x, head=head)
        if n == self.batch:
            return out
        return out[:n] if isinstance(out, torch.Tensor) else {k: v[:n] for k, v in out.items()}


def for_inference(model: nn.Module) -> nn.Module:
    """`model` compiled for the commands' --compile (CompiledForInference): the first call of each
    head compiles (minutes at the paper's size); then nothing recompiles."""
    require_compile("--compile", "leave out --compile or upgrade torch")
    return CompiledForInference(model)
