"""Small model configs for tests: the real architecture, narrow and short so it runs in seconds."""
from __future__ import annotations

import socket
import time

import pytest
import torch
import torch.multiprocessing as mp

from enformer_train import EnformerConfig


def tiny_config(**overrides) -> EnformerConfig:
    """Channels 48, 2 transformer layers, 2 heads; input 1,024 bp (8 bins of 128), 4 target bins."""
    values = dict(channels=48, num_transformer_layers=2, num_heads=2, key_size=8,
                  num_relative_position_features=12, tower_divisible_by=8, sequence_length=1024,
                  target_length=4, heads={"human": 5, "mouse": 3})
    values.update(overrides)
    return EnformerConfig(**values)


def no_dropout(config: EnformerConfig) -> EnformerConfig:
    for name in ("dropout_rate", "attention_dropout_rate", "positional_dropout_rate", "final_dropout_rate"):
        setattr(config, name, 0.0)
    return config


def randomise_(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every parameter and moving average random values, so that no part hides behind a zero
    initialisation (the attention output layer starts at zero) and attention is far from uniform."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.ndim == 1:
                p.copy_(noise * 0.1 + (1.0 if name.endswith("norm.weight") or ".norm.weight" in name else 0.0))
            elif "r_w_bias" in name or "r_r_bias" in name:
                p.copy_(noise)
            else:
                gain = 3.0 if any(s in name for s in (".q.", ".k.", ".r_k.")) else 1.0
                p.copy_(noise * gain / p[0].numel() ** 0.5)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)


def free_port() -> int:
    """A free TCP port on 127.0.0.1, for a test's own process group (MASTER_PORT)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn_ranks(fn, args: tuple, nprocs: int = 2, timeout_s: float = 300.0) -> None:
    """mp.spawn(fn, args, nprocs) with a deadline: ranks still running after timeout_s are killed
    and the test fails naming them, where mp.spawn would wait for ever on a hung collective."""
    context = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=1.0):  # raises, naming the rank, when one fails
        if time.monotonic() > deadline:
            alive = [rank for rank, process in enumerate(context.processes) if process.is_alive()]
            for process in context.processes:
                process.kill()
            pytest.fail(f"rank(s) {alive} still running after {timeout_s:.0f} s; killed")
