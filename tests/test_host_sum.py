"""The shared page that sums batch-norm vectors over the ranks of one host (distributed/host_sum.py)."""
import os

import pytest
import torch
import torch.distributed as dist

from enformer_train.distributed import host_sum, teardown
from model_helpers import free_port, spawn_ranks

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
        teardown()


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.skipif(os.uname().machine not in ("x86_64", "AMD64"), reason="the page is x86-64 only")
def test_every_rank_gets_the_rank_order_float64_sum_and_no_file_is_left(tmp_path):
    spawn_ranks(_worker, (free_port(), str(tmp_path)), nprocs=WORLD)
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
        teardown()


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.skipif(not hasattr(os, "posix_fallocate"), reason="no posix_fallocate")
def test_no_room_for_the_page_leaves_every_rank_on_gloo(tmp_path):
    before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    spawn_ranks(_full_worker, (free_port(), str(tmp_path)), nprocs=2)
    for r in range(2):
        result = torch.load(tmp_path / f"rank{r}.pt", weights_only=True)
        assert result["opened"] is False
        torch.testing.assert_close(result["sum"], _vector(0, 0, 129) + _vector(1, 0, 129))
    after = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    assert after == before


# -- a peer that dies or freezes during an exchange ---------------------------------------------

_PEER = """
import os, signal, sys, torch
from enformer_train.distributed import host_sum
from enformer_train.distributed import world as distributed

rank, fault = int(os.environ["RANK"]), sys.argv[1]
distributed.setup("cpu", float(sys.argv[2]), "train")  # as the trainer: watchdog, gloo, the page
assert host_sum._active is not None
distributed.set_where("step 3")
for i in range(20):
    if rank == 1 and i == 10:
        os.kill(os.getpid(), signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
    with distributed.watching("the forward/backward of human (batch-norm and gradient all_reduce)"):
        host_sum.sum_over_ranks(torch.full((129,), float(rank), dtype=torch.float64))
print("done", flush=True)
distributed.teardown()
"""


def _page_files() -> set:
    return {name for name in os.listdir("/dev/shm") if name.startswith("enformer-train-")}


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.skipif(os.uname().machine not in ("x86_64", "AMD64") or not os.path.isdir("/dev/shm"),
                    reason="the page is x86-64 only")
@pytest.mark.parametrize("fault", ["kill", "stop"])
def test_a_peer_killed_or_stopped_during_an_exchange_ends_the_survivor_with_one_line_naming_it(fault):
    import subprocess
    import sys
    import time

    timeout = 60 if fault == "kill" else 4  # a dead peer is seen at once, a stopped one at the timeout
    before, port = _page_files(), free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        env.pop("TORCHELASTIC_RUN_ID", None)
        procs.append(subprocess.Popen([sys.executable, "-c", _PEER, fault, str(timeout)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    started = time.monotonic()
    try:
        out, err = procs[0].communicate(timeout=timeout + 60)
        elapsed = time.monotonic() - started
        if fault == "stop":
            assert procs[1].poll() is None  # still there, stopped
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()
    assert procs[0].returncode == 1 and "done" not in out, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    at = "enformer-train train: error: rank 0: the batch-norm sums on the host's shared page at step 3"
    pid = procs[1].pid
    if fault == "kill":
        assert lines[0].startswith(f"{at}: rank 1 (pid {pid}) died after "), lines[0]
        assert elapsed < 30  # not the 60-s timeout
    else:
        assert lines[0].startswith(f"{at} waited more than 4 s (train.collective_timeout_s): rank 1 did not arrive "
                                   f"(pid {pid}: stopped); exiting so that torchrun"), lines[0]
        assert 4 < elapsed < 30
    assert _page_files() == before  # the page left no file


def test_a_wait_without_an_owner_raises_peer_lost_naming_the_rank(tmp_path):
    import subprocess
    import time

    def page(peer_pid: int, timeout_s):
        path = str(tmp_path / f"page-{peer_pid}")
        mine = host_sum.HostSum(path, 0, 2, 8, create=True, timeout_s=timeout_s)
        peer = host_sum.HostSum(path, 1, 2, 8, create=False)
        peer._pids[1] = peer_pid  # rank 1 "is" that process; it never posts
        return mine

    gone = subprocess.Popen(["true"])
    gone.wait()
    with pytest.raises(host_sum.PeerLost, match=rf"^rank 1 \(pid {gone.pid}\) died") as lost:
        page(gone.pid, None).sum(torch.ones(3, dtype=torch.float64))
    assert lost.value.dead and lost.value.waited_s < 1
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        started = time.monotonic()
        with pytest.raises(host_sum.PeerLost, match=rf"^rank 1 did not arrive \(pid {sleeper.pid}: sleeping\)"):
            page(sleeper.pid, 0.3).sum(torch.ones(3, dtype=torch.float64))
        assert 0.3 < time.monotonic() - started < 5
    finally:
        sleeper.kill()
        sleeper.wait()
