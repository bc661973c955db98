"""Sharded loading with real DataLoader worker processes: disjoint, complete shares; exact resume."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch.utils.data import get_worker_info

from conftest_data import store_dir
from enformer_train.data.loader import Loader, Shard, rank_share
from enformer_train.data.store import Store
from enformer_train.errors import UserError


class RecordingStore(Store):
    """A store that notes which (rank, worker) process read which sample."""

    def __init__(self, path, split, log_dir, rank):
        super().__init__(path, split)
        self.log_dir, self.rank = log_dir, rank

    def read_sequence(self, i, out=None):
        info = get_worker_info()
        worker = info.id if info else -1
        with open(os.path.join(self.log_dir, f"rank{self.rank}-worker{worker}-pid{os.getpid()}"), "a") as f:
            f.write(f"{int(i)}\n")
        return super().read_sequence(i, out)


def _logs(log_dir):
    out = {}
    for name in os.listdir(log_dir):
        rank, worker, _ = name.split("-")
        out.setdefault((rank, worker), []).extend(int(x) for x in open(os.path.join(log_dir, name)).read().split())
    return out


def test_evaluation_shares_disjoint_and_complete_2_ranks_x_2_workers(tmp_path):
    seen = []
    for rank in range(2):
        store = RecordingStore(store_dir("human"), "valid", str(tmp_path), rank)
        loader = Loader(store, 5, train=False, shard=Shard(rank, 2), num_workers=2)
        batches = list(loader)
        assert len(batches) == len(loader) == 4  # 16 samples a rank: 5 + 5 + 5 + 1
        assert [len(b["index"]) for b in batches] == [5, 5, 5, 1]
        seen += [i for b in batches for i in b["index"].tolist()]
    assert sorted(seen) == list(range(32))  # every sample exactly once
    logs = _logs(str(tmp_path))
    assert sorted(logs) == [("rank0", "worker0"), ("rank0", "worker1"), ("rank1", "worker0"), ("rank1", "worker1")]
    flat = [i for v in logs.values() for i in v]
    assert sorted(flat) == list(range(32))  # disjoint across the four (rank, worker) processes
    assert len({name.split("-pid")[1] for name in os.listdir(tmp_path)}) == 4  # four real processes


def test_evaluation_uneven_shares_no_duplicates():
    store = Store(store_dir("human"), "valid")
    counts = []
    seen = []
    for rank in range(3):
        batches = list(Loader(store, 4, train=False, shard=Shard(rank, 3), num_workers=2))
        counts.append(sum(len(b["index"]) for b in batches))
        seen += [i for b in batches for i in b["index"].tolist()]
    assert counts == [11, 11, 10] and sorted(seen) == list(range(32))


def test_training_shares_disjoint_each_epoch_and_reshuffled(tmp_path):
    epochs = {}
    for rank in range(2):
        store = RecordingStore(store_dir("human"), "train", str(tmp_path), rank)
        loader = Loader(store, 8, train=True, seed=11, shard=Shard(rank, 2), num_workers=2)
        assert loader.steps_per_epoch == 16  # 256 samples / 2 ranks / 8
        it = iter(loader)
        for epoch in range(2):
            epochs.setdefault(epoch, []).append([i for _ in range(16) for i in next(it)["index"].tolist()])
        assert loader.epoch == 2
    for epoch, (r0, r1) in epochs.items():
        assert not set(r0) & set(r1) and sorted(r0 + r1) == list(range(256))
        np.testing.assert_array_equal(r0, rank_share(256, 11, epoch, Shard(0, 2), True))
    assert epochs[0][0] != epochs[1][0]  # a new order every epoch
    logs = _logs(str(tmp_path))
    for r, rank in enumerate(("rank0", "rank1")):  # a rank's two workers split each epoch's share
        w0, w1 = logs[(rank, "worker0")][:64], logs[(rank, "worker1")][:64]
        assert not set(w0) & set(w1) and sorted(w0 + w1) == sorted(epochs[0][r])


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in ("sequence", "target", "index", "shift", "reverse_complement"))


def test_resume_gives_identical_batches():
    store = Store(store_dir("human"), "train")
    reference = Loader(store, 12, train=True, seed=5, num_workers=2)  # 21 steps an epoch
    expected = [b for _, b in zip(range(30), reference)]
    interrupted = Loader(store, 12, train=True, seed=5, num_workers=2)
    first = [b for _, b in zip(range(17), interrupted)]
    state = interrupted.state_dict()
    assert state["epoch"] == 0 and state["position"] == 17
    resumed = Loader(store, 12, train=True, seed=5, num_workers=1)  # the worker count may change
    resumed.load_state_dict(state)
    after = [b for _, b in zip(range(13), resumed)]  # crosses into epoch 1
    assert resumed.state_dict()["epoch"] == 1 and resumed.state_dict()["position"] == 9
    assert all(_same(a, b) for a, b in zip(first + after, expected))
    with pytest.raises(UserError, match="batch_size was 12, now 6"):
        Loader(store, 6, train=True, seed=5).load_state_dict(state)


def test_batches_do_not_depend_on_worker_count():
    store = Store(store_dir("mouse"), "train")
    a = [b for _, b in zip(range(6), Loader(store, 7, train=True, seed=1, num_workers=0))]
    b = [b for _, b in zip(range(6), Loader(store, 7, train=True, seed=1, num_workers=2))]
    assert all(_same(x, y) for x, y in zip(a, b))


def test_loader_errors():
    store = Store(store_dir("human"), "valid")
    with pytest.raises(UserError, match="too few for batches of 64 on each of 1 ranks"):
        Loader(store, 64, train=True)
    with pytest.raises(UserError, match="cannot give 6150-bp inputs"):
        Loader(store, 4, train=True, sequence_length=6150)
