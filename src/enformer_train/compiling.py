"""torch.compile for the commands: the torch it needs, and a model compiled for inference."""
from __future__ import annotations

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
        self.compiled = torch.compile(model, dynamic=False)
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
