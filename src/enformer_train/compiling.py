"""torch.compile for the commands: the torch it needs, and a model compiled for inference."""
from __future__ import annotations

import torch

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


def for_inference(model: torch.nn.Module) -> torch.nn.Module:
    """`model` under torch.compile, for the commands' --compile: the first call of each head compiles
    (minutes at the paper's size), a second batch size compiles once more with the batch size
    dynamic, a batch of one once more; then nothing recompiles. Attributes (config, heads) read
    through to the model."""
    require_compile("--compile", "leave out --compile or upgrade torch")
    return torch.compile(model)
