"""What a cross-replica batch norm sums its vectors with: a `Reducer`, given to the model
(`Enformer.use_reducer`) by whoever set up the ranks, and one opaque operator that torch.compile
keeps inside its graph (a Python call there would break the graph at every batch norm).

`ProcessGroupSum` is the default: the default process group's ranks, through the host's shared
page when one is open (host_sum.py) and the vector fits, else torch.distributed.all_reduce. A
batch norm without a reducer of its own uses it, so a model built under torchrun sums over the
ranks as Sonnet's CrossReplicaBatchNorm does.
"""
from __future__ import annotations

from typing import Protocol

import torch
import torch.distributed as dist

from .host_sum import sum_over_ranks


class Reducer(Protocol):
    """Sums a tensor over a set of ranks; `world_size` 1 means there is nothing to sum over."""

    @property
    def world_size(self) -> int: ...

    def sum(self, t: torch.Tensor) -> torch.Tensor: ...


class ProcessGroupSum:
    """The default process group's ranks (1 when there is none)."""

    @property
    def world_size(self) -> int:
        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        return sum_over_ranks(t)


PROCESS_GROUP = ProcessGroupSum()
_REDUCERS: list[Reducer] = [PROCESS_GROUP]  # a reducer's key is its index: the operator takes an int


def key_of(reducer: Reducer | None) -> int:
    """The operator's key for `reducer` (None: the process group's), registered on first use."""
    reducer = reducer if reducer is not None else PROCESS_GROUP
    for key, known in enumerate(_REDUCERS):
        if known is reducer:
            return key
    _REDUCERS.append(reducer)
    return len(_REDUCERS) - 1


@torch.library.custom_op("enformer_train::sum_over_ranks", mutates_args=(), schema="(Tensor t, int key) -> Tensor")
def sum_with(t: torch.Tensor, key: int) -> torch.Tensor:
    """The sum of t over the ranks of the reducer registered as `key`, as one opaque operator."""
    return _REDUCERS[key].sum(t.clone())


@sum_with.register_fake
def _(t: torch.Tensor, key: int) -> torch.Tensor:
    return torch.empty_like(t)
