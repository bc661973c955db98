"""One process or many: torchrun's environment, the process group and the device."""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import UserError


@dataclass
class World:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto") -> World:
    """Join torchrun's process group (NCCL on CUDA, gloo on CPU) when WORLD_SIZE > 1; choose the device."""
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise UserError("train.device is cuda but no CUDA device is visible; use train.device=cpu")
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        dev = torch.device("cuda", torch.cuda.current_device())
    elif device == "cpu":
        dev = torch.device("cpu")
        # Processes sharing a node share its cores: more threads than cores makes every op wait.
        local = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        if local > 1:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    else:
        raise UserError(f"train.device must be auto, cpu or cuda, got {device!r}")
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
        if restart is not None and os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true":
            # After a restart under torchrun, the workers of the new round must not read the
            # connection keys the dead round left in the agent's store (gloo would dial ports that
            # are gone and wait out its timeout): keys live under a prefix per restart.
            store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
                                  is_master=False, timeout=timedelta(minutes=30))
            kwargs["store"] = dist.PrefixStore(f"enformer-train/restart-{restart}", store)
            kwargs.update(rank=rank, world_size=world_size)
        dist.init_process_group(backend, timeout=timedelta(minutes=30), **kwargs)
    return World(rank, world_size, local_rank, dev)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_(t: torch.Tensor, op=None) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t


def all_gather_objects(obj) -> list:
    if dist.is_initialized() and dist.get_world_size() > 1:
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
