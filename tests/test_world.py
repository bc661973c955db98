"""The end of a process group: teardown() straight after a collective returns, on every torch."""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist

from enformer_train.distributed import teardown
from model_helpers import spawn_ranks


def _rounds(rank: int, store_dir: str, rounds: int) -> None:
    for i in range(rounds):
        store = dist.FileStore(os.path.join(store_dir, f"store{i}"), 2)
        dist.init_process_group("gloo", store=store, rank=rank, world_size=2)
        total = torch.full((3,), float(rank + 1))
        dist.all_reduce(total)
        assert total.tolist() == [3.0, 3.0, 3.0]
        del total  # gloo's worker thread may now hold the tensor's last reference
        teardown()


@pytest.mark.slow
@pytest.mark.distributed
def test_a_gloo_group_torn_down_straight_after_a_collective_does_not_hang(tmp_path):
    # torch 2.4's destroy_process_group joined gloo's worker threads holding the GIL, which a worker
    # releasing that tensor needed: without teardown()'s pause two ranks froze within ten rounds
    spawn_ranks(_rounds, (str(tmp_path), 30), nprocs=2, timeout_s=120)
