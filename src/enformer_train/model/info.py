"""What a model config costs: parameters per part, FLOPs per sample, activation memory.

Measured, not estimated by formula: the model runs on the meta device (no memory, no compute)
under torch's FLOP counter, and the tensors autograd saves for backward are added up.
"""
from __future__ import annotations

import dataclasses

import torch
from torch.utils.flop_counter import FlopCounterMode

from .config import EnformerConfig
from .enformer import Enformer


def parameter_counts(model: Enformer) -> dict[str, int]:
    parts = {"stem": model.stem, "conv_tower": model.conv_tower, "transformer": model.transformer,
             "final_pointwise": model.final_pointwise}
    parts.update({f"head {name}": head for name, head in model.heads.items()})
    counts = {name: sum(p.numel() for p in part.parameters()) for name, part in parts.items()}
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts


def measure(config: EnformerConfig, batch: int = 1) -> dict[str, float]:
    """Parameters, forward and training FLOPs per sample, and the activation bytes per sample that
    a training step keeps for backward (float32, no checkpointing), at config.sequence_length."""
    # Local batch norm: the meta device has nothing to all-reduce, whatever process group exists.
    config = dataclasses.replace(config, cross_replica_batchnorm=False)
    with torch.device("meta"):
        model = Enformer(config).train()
        x = torch.zeros(batch, config.sequence_length, 4)
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor):
        saved[t.untyped_storage()._cdata] = t.untyped_storage().nbytes()
        return t

    with FlopCounterMode(display=False) as forward_counter:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(x)
    loss = sum(o.sum() for o in out.values())
    with FlopCounterMode(display=False) as backward_counter:
        loss.backward()
    forward = forward_counter.get_total_flops() / batch
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "forward_flops": forward,
        "training_flops": forward + backward_counter.get_total_flops() / batch,
        "activation_bytes": sum(saved.values()) / batch,
    }


def describe(config: EnformerConfig) -> str:
    """A table of parameters per part, FLOPs per sample and activation memory of `config`."""
    with torch.device("meta"):
        model = Enformer(config)
    counts = parameter_counts(model)
    m = measure(config)
    lines = [f"Enformer: channels {config.channels}, {config.num_transformer_layers} transformer layers, "
             f"{config.num_heads} heads, input {config.sequence_length:,} bp -> {config.target_length} bins "
             f"of {config.bin_size} bp",
             f"{'part':<22}{'parameters':>16}"]
    lines += [f"{name:<22}{n:>16,}" for name, n in counts.items()]
    lines += [f"{'forward FLOPs/sample':<22}{m['forward_flops'] / 1e12:>15.3f}T",
              f"{'training FLOPs/sample':<22}{m['training_flops'] / 1e12:>15.3f}T",
              f"{'activations/sample':<22}{m['activation_bytes'] / 2**30:>14.2f}GiB  (float32, saved for backward)"]
    return "\n".join(lines)
