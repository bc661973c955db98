"""The shared page that sums batch-norm vectors over the ranks of one host (model/host_sum.py)."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from enformer_train.model import host_sum
from model_helpers import free_port

WORLD = 3
SIZES = [129, 1, 64, 16384, 7, 3000] * 5  # 16384 = the page's capacity; the slots alternate


def _vector(rank: int, call: int, size: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * call + rank)
    return torch.randn(size, generator=g, dtype=torch.float64) * 10.0 ** (rank - 1)


def _worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
        opened = host_sum.open_host_sum()
        after = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
        sums = [host_sum.sum_over_ranks(_vector(rank, i, n)) for i, n in enumerate(SIZES)]
        # not on the page: another dtype, and more than it holds; both still sum over the ranks
        single = host_sum.sum_over_ranks(_vector(rank, 99, 5).float())
        large = host_sum.sum_over_ranks(_vector(rank, 98, 16385))
        torch.save({"opened": opened, "left_files": sorted(after - before), "sums": sums, "single": single,
                    "large": large}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        host_sum.close_host_sum()
        dist.destroy_process_group()


@pytest.mark.skipif(os.uname().machine not in ("x86_64", "AMD64"), reason="the page is x86-64 only")
def test_every_rank_gets_the_rank_order_float64_sum_and_no_file_is_left(tmp_path):
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for r in ranks:
        assert r["opened"]
        assert r["left_files"] == []  # unlinked as soon as every rank had it mapped
        for i, (n, got) in enumerate(zip(SIZES, r["sums"])):
            expected = _vector(0, i, n) + _vector(1, i, n) + _vector(2, i, n)  # in rank order
            assert got.dtype == torch.float64 and got.shape == (n,)
            assert torch.equal(got, expected), f"call {i} ({n} values)"
        expected = sum(_vector(k, 99, 5).float() for k in range(WORLD))
        torch.testing.assert_close(r["single"], expected)
        expected = sum(_vector(k, 98, 16385) for k in range(WORLD))
        torch.testing.assert_close(r["large"], expected, rtol=1e-12, atol=1e-9)
    for r in ranks[1:]:  # the same bits on every rank
        assert all(torch.equal(a, b) for a, b in zip(r["sums"], ranks[0]["sums"]))


def _full_worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        if rank == 0:  # /dev/shm has no room for the page
            def no_room(fd, offset, size):
                raise OSError(28, "No space left on device")
            os.posix_fallocate = no_room
        opened = host_sum.open_host_sum()
        got = host_sum.sum_over_ranks(_vector(rank, 0, 129))
        torch.save({"opened": opened, "sum": got}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        host_sum.close_host_sum()
        dist.destroy_process_group()


@pytest.mark.skipif(not hasattr(os, "posix_fallocate"), reason="no posix_fallocate")
def test_no_room_for_the_page_leaves_every_rank_on_gloo(tmp_path):
    before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    mp.spawn(_full_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    for r in range(2):
        result = torch.load(tmp_path / f"rank{r}.pt", weights_only=True)
        assert result["opened"] is False
        torch.testing.assert_close(result["sum"], _vector(0, 0, 129) + _vector(1, 0, 129))
    after = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    assert after == before
