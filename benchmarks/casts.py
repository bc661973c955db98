"""Dtype casts in one CPU training step under bf16 autocast: how many and how many bytes.

Under autocast a step casts float32 weights to bf16 for the matrix products (and their gradients
back to float32); the batch norms keep float32 statistics. This counts the casts the step makes:
every `aten::_to_copy` torch.profiler sees (also those inside other operators), and the step's own
casts (`aten::_to_copy`, `aten::copy_`) through a dispatch mode, by kind, with the bytes written:
weights (and their gradients), activations ([batch, channels, length] and larger), small vectors
(batch-norm moments, biases). The model casts each block's weights in one operation (gathered by a
`cat`, listed apart: a copy, not a cast); --per-weight leaves them to autocast, one cast per weight.

The model is the colab's quarter width (channels 384, 11 layers), batch 1, training mode; one
forward (under autocast), Poisson loss and backward, after one untimed step.

    python benchmarks/casts.py [--length 196608] [--channels 384] [--layers 11] [--per-weight]
"""
from __future__ import annotations

import argparse
import collections

import torch
from torch.profiler import profile
from torch.utils._python_dispatch import TorchDispatchMode

from enformer_train.model.config import EnformerConfig
from enformer_train.model.enformer import build_model
from enformer_train.train.loss import poisson_loss

class _Casts(TorchDispatchMode):
    """(kind, from dtype, to dtype) -> [calls, bytes written], for the casts the step asks for."""

    def __init__(self, weight_shapes):
        super().__init__()
        self.weight_shapes = weight_shapes
        self.table = collections.defaultdict(lambda: [0, 0])
        self.gathered = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name == "cat" and out.dim() == 1:  # weights or their gradients gathered for one cast (ops.CastOnce)
            self.gathered.add(out.data_ptr())
            row = self.table[("weights", "cat", str(out.dtype)[6:], str(out.dtype)[6:])]
            row[0] += 1
            row[1] += out.numel() * out.element_size()
        if name in ("_to_copy", "copy_"):
            source, written = (args[0], out) if name == "_to_copy" else (args[1], args[0])
            if (tuple(written.shape) in self.weight_shapes and written.dim() >= 2) or (name == "_to_copy" and source.data_ptr() in self.gathered):
                kind = "weights"
            elif written.dim() >= 3:
                kind = "activations"
            else:
                kind = "vectors"
            row = self.table[(kind, name, str(source.dtype)[6:], str(written.dtype)[6:])]
            row[0] += 1
            row[1] += written.numel() * written.element_size()
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--length", type=int, default=196_608)
    p.add_argument("--channels", type=int, default=384)
    p.add_argument("--layers", type=int, default=11)
    p.add_argument("--per-weight", action="store_true",
                   help="leave the weights' casts to autocast, one per weight and use (as before the cast "
                        "once of each block's weights)")
    args = p.parse_args()
    torch.manual_seed(0)
    bins = args.length // 128
    config = EnformerConfig(channels=args.channels, num_transformer_layers=args.layers,
                            sequence_length=args.length, target_length=bins - 2 * (bins // 8))
    model = build_model(config).train()
    model.cast_weights_once = not args.per_weight
    codes = torch.randint(0, 4, (1, args.length))
    target = torch.rand(1, config.target_length, config.heads["human"])

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            pred = model(codes, head="human")
        poisson_loss(pred, target).backward()
        model.zero_grad(set_to_none=True)

    step()
    with profile(record_shapes=True) as prof:
        step()
    # every cast torch ran, also those inside other operators; 0-dim ones are Python numbers made tensors
    casts = [e for e in prof.events() if e.name == "aten::_to_copy"]
    tensors = sum(1 for e in casts if e.input_shapes and e.input_shapes[0])
    mode = _Casts({tuple(p.shape) for p in model.parameters()})
    with mode:
        step()

    print(f"Casts in one training step under bf16 autocast, CPU, batch 1, channels {args.channels}, "
          f"{args.layers} layers, {args.length:,} bp (torch {torch.__version__})")
    print(f"torch.profiler: {tensors} aten::_to_copy of tensors ({len(casts)} with Python numbers); the step's "
          "own casts by kind:")
    print(f"| {'what':<11} | {'op':<8} | {'from':<8} | {'to':<8} | {'calls':>5} | {'MiB':>7} |")
    print(f"|{'-' * 13}|{'-' * 10}|{'-' * 10}|{'-' * 10}|{'-' * 7}|{'-' * 9}|")
    rows = sorted(mode.table.items(), key=lambda kv: (kv[0][0], -kv[1][0]))
    for (kind, name, source, written), (calls, size) in rows:
        print(f"| {kind:<11} | {name:<8} | {source:<8} | {written:<8} | {calls:>5} | {size / 2**20:>7.1f} |")
    casts = {key: value for key, value in mode.table.items() if key[1] != "cat"}
    calls = sum(c for c, _ in casts.values())
    size = sum(s for _, s in casts.values())
    print(f"| {'all casts':<11} | {'':<8} | {'':<8} | {'':<8} | {calls:>5} | {size / 2**20:>7.1f} |")


if __name__ == "__main__":
    main()
