"""What a model config costs: parameters per part, FLOPs per sample, activation memory.

Measured, not estimated by formula: the model runs on the meta device (no memory, no compute)
under torch's FLOP counter, and the tensors autograd saves for backward are added up.
"""
from __future__ import annotations

import dataclasses
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from .attention import attention_paths
from .config import EnformerConfig
from .enformer import Enformer, build_model


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
        model = build_model(config).train()
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


class _PeakMemory(TorchDispatchMode):
    """The most bytes that tensors made by ops hold at once (storages counted once, freed when their
    last tensor goes): what an eager forward needs beside its weights."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, list] = {}  # storage -> [bytes, tensors alive]
        self.now = self.peak = 0

    def _free(self, key: int) -> None:
        entry = self.live[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.now -= entry[0]
            del self.live[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                key = t.untyped_storage()._cdata
                if key not in self.live:
                    self.live[key] = [t.untyped_storage().nbytes(), 0]
                    self.now += self.live[key][0]
                    self.peak = max(self.peak, self.now)
                self.live[key][1] += 1
                weakref.finalize(t, self._free, key)
        return out


def inference_bytes(config: EnformerConfig) -> float:
    """Peak bytes of the tensors one float32 forward of one sample makes under torch.no_grad()."""
    config = dataclasses.replace(config, cross_replica_batchnorm=False)
    with torch.device("meta"):
        model = build_model(config).eval()
        x = torch.zeros(1, config.sequence_length, dtype=torch.uint8)
    counter = _PeakMemory()
    with torch.no_grad(), counter:
        out = model(x)
    del out
    return counter.peak


def _si(value: float, unit: str) -> str:
    """1.23e12 -> '1.23 T' + unit: the largest prefix that keeps the number at least 1."""
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def _bytes(value: float) -> str:
    for prefix, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= scale:
            return f"{value / scale:.3g} {prefix}"
    return f"{value:.0f} B"


_ATTENTION_WORDS = {"sdpa": "torch's scaled_dot_product_attention with the relative positions as a bias",
                    "explicit": "the explicit path (softmax of content + shifted relative logits)"}


def describe(config: EnformerConfig) -> str:
    """A table of parameters per part, FLOPs per sample and activation memory of `config`."""
    with torch.device("meta"):
        model = build_model(config)
    counts = parameter_counts(model)
    m = measure(config)
    lines = [f"Enformer: channels {config.channels}, {config.num_transformer_layers} transformer layers, "
             f"{config.num_heads} heads, input {config.sequence_length:,} bp -> {config.target_length} bins "
             f"of {config.bin_size} bp",
             f"{'part':<22}{'parameters':>16}"]
    lines += [f"{name:<22}{n:>16,}" for name, n in counts.items()]
    weights = 4 * counts["total"]
    lines += [f"{'forward FLOPs/sample':<22}{_si(m['forward_flops'], 'FLOPs'):>16}",
              f"{'training FLOPs/sample':<22}{_si(m['training_flops'], 'FLOPs'):>16}",
              "memory (float32, eager; add framework overhead):",
              f"  {'weights':<20}{_bytes(weights):>16}",
              f"  {'inference':<20}{_bytes(weights + inference_bytes(config)):>16}  weights + the peak of one sample's "
              "forward under torch.no_grad(), model.eval()",
              f"  {'training':<20}{_bytes(4 * weights):>16}  weights, gradients and Adam's two moments",
              f"  {'  + per sample':<20}{_bytes(m['activation_bytes']):>16}  activations saved for backward "
              "(train.batch_per_rank x this; model.gradient_checkpointing lowers it)",
              "attention: " + ", ".join(f"{_ATTENTION_WORDS[p]} on {d}" for d, p in
                                        ((d, attention_paths(model, torch.device(d)).pop()) for d in ("cuda", "cpu")))]
    return "\n".join(lines)
