"""Sums of small float64 vectors over ranks that share one host, through shared memory.

Cross-replica batch norm exchanges two small vectors per layer and step (the moments forward, the
gradient sums backward): 28 exchanges a step for the demo model. Over gloo each all_reduce took
about 1 ms on a 2-core machine (the latency of gloo's TCP rounds, whatever the size): a quarter of
a demo step (benchmarks/batchnorm_sums.py). When every rank of the process group runs on this
host (torchrun on one node, the CPU case), the ranks instead write their vectors to a shared page
and wait on a counter per rank: tens of microseconds.

The sum adds the ranks' vectors in rank order in float64, so every rank gets the same bits (with two
ranks, exactly what gloo's all_reduce gives: a + b). Other tensors, other devices, or a process group
spread over hosts use torch.distributed as before.

The wait spins, after about 0.2 ms yields the core at every poll, so ranks that outnumber the
cores still progress, and after 10 ms sleeps a millisecond between polls, so a rank waiting on a
frozen peer does not hold a core at 100%. Gloo notices a dead peer (its connection resets); the
page would not, so the wait looks at the peers it waits for every 50 ms: a peer whose process has
died (gone, or a zombie) ends the wait at once, and a peer that has not arrived within the
collective timeout (train.collective_timeout_s: frozen, stopped, hung) ends it then. Either way
the page's owner (distributed/world.py) is told which ranks and why, in a PeerLost; it ends the
process with one line, as the watchdog does for the other collectives.
"""
from __future__ import annotations

import mmap
import os
import platform
import secrets
import tempfile
import time

import numpy as np
import torch
import torch.distributed as dist

_LINE = 64  # bytes: one cache line per rank: its counter, then its process id
_SPIN = 200  # polls (about 0.2 ms) before a wait starts yielding the core
_YIELD_S = 0.01  # seconds of yielding before a wait sleeps between polls
_NAP_S = 0.001  # the sleep between polls of a long wait
_CHECK_S = 0.05  # seconds between looks at the peers a wait is waiting for


class PeerLost(RuntimeError):
    """Ranks that did not post their vector: `dead` (their process is gone) or, after `timeout_s`,
    still missing. `who` says which in words: 'rank 1 (pid 1234) died', 'rank 1 did not arrive
    (pid 1234: stopped)'."""

    def __init__(self, who: str, dead: bool, waited_s: float, timeout_s: float | None):
        super().__init__(f"{who} (waited {waited_s:.1f} s)")
        self.who, self.dead, self.waited_s, self.timeout_s = who, dead, waited_s, timeout_s


_STATES = {"R": "running", "S": "sleeping", "D": "in uninterruptible I/O", "T": "stopped", "t": "stopped by a "
           "debugger", "I": "idle"}


def process_state(pid: int) -> str | None:
    """What the process `pid` is doing ('running', 'stopped', ...) or None when it has died (gone,
    or a zombie that its parent has not reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None
    except OSError:  # no /proc (not Linux): only whether the process exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return "alive"
    return None if state in ("Z", "X") else _STATES.get(state, state)


class HostSum:
    """The shared page of `world` ranks: a counter per rank, then two slots of `capacity` float64 each."""

    def __init__(self, path: str, rank: int, world: int, capacity: int, create: bool,
                 timeout_s: float | None = None, on_lost=None) -> None:
        self.rank, self.world, self.capacity = rank, world, capacity
        self.timeout_s = timeout_s  # a wait for peers that are alive ends after this long; None: never
        self.on_lost = on_lost  # called with the PeerLost instead of raising it (to end the process)
        size = world * _LINE + world * 2 * capacity * 8
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = os.open(path, flags, 0o600)
        try:
            if create:
                # reserve the pages now: a full /dev/shm is an error here, not a SIGBUS at the first write
                os.posix_fallocate(fd, 0, size) if hasattr(os, "posix_fallocate") else os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        except OSError:
            if create:
                os.unlink(path)
            raise
        finally:
            os.close(fd)
        lines = np.frombuffer(self._map, dtype=np.int64, count=world * _LINE // 8).reshape(world, -1)
        self._counters, self._pids = lines[:, 0], lines[:, 1]
        self._pids[rank] = os.getpid()
        self._slots = np.frombuffer(self._map, dtype=np.float64, offset=world * _LINE).reshape(world, 2, capacity)
        self._seq = 0

    def fits(self, t: torch.Tensor) -> bool:
        return t.dtype == torch.float64 and t.device.type == "cpu" and t.numel() <= self.capacity

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """sum over ranks of t (every rank calls with the same shape, in the same order)."""
        self._seq += 1
        seq, slot, n = self._seq, self._seq % 2, t.numel()
        self._slots[self.rank, slot, :n] = t.detach().reshape(-1).numpy()
        # x86-64 keeps stores in program order: a rank that sees the counter sees the vector. A rank can
        # be at most one exchange ahead (it waits for all at each), so the other slot is free to write.
        self._counters[self.rank] = seq
        polls = 0
        while self._counters.min() < seq:
            polls += 1
            if polls > _SPIN:
                self._wait(seq)
                break
        out = self._slots[0, slot, :n].copy()
        for r in range(1, self.world):
            out += self._slots[r, slot, :n]
        return torch.from_numpy(out).view(t.shape)

    def _wait(self, seq: int) -> None:
        """Wait for every rank to post exchange `seq`: yield, then sleep between polls, and look at
        the missing peers every _CHECK_S (PeerLost when one died, or after timeout_s)."""
        start = time.monotonic()
        check = start + _CHECK_S
        while self._counters.min() < seq:
            now = time.monotonic()
            if now - start < _YIELD_S:
                os.sched_yield() if hasattr(os, "sched_yield") else time.sleep(0)
            else:
                time.sleep(_NAP_S)
            if now >= check:
                check = now + _CHECK_S
                self._look_at_peers(seq, now - start)

    def _look_at_peers(self, seq: int, waited: float) -> None:
        missing = [r for r in range(self.world) if self._counters[r] < seq]
        states = {r: process_state(int(self._pids[r])) for r in missing}
        dead = [r for r in missing if states[r] is None]
        if dead:
            who = "; ".join(f"rank {r} (pid {self._pids[r]}) died" for r in dead)
            self._lost(PeerLost(who, True, waited, self.timeout_s))
        elif missing and self.timeout_s is not None and waited > self.timeout_s:
            s = "s" if len(missing) > 1 else ""
            who = (f"rank{s} {', '.join(map(str, missing))} did not arrive ("
                   + ", ".join(f"pid {self._pids[r]}: {states[r]}" for r in missing) + ")")
            self._lost(PeerLost(who, False, waited, self.timeout_s))

    def _lost(self, error: PeerLost) -> None:
        if self.on_lost is not None:
            self.on_lost(error)
        raise error

    def close(self) -> None:
        self._counters = self._pids = self._slots = None
        self._map.close()


_active: HostSum | None = None


def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """The sum of t over the default process group's ranks (t may be overwritten): through the host's
    shared page when one is open and t fits, else torch.distributed.all_reduce."""
    if _active is not None and _active.fits(t):
        return _active.sum(t)
    dist.all_reduce(t)
    return t


def open_host_sum(capacity: int = 1 << 14, timeout_s: float | None = None, on_lost=None) -> bool:
    """Collective: open the shared page when every rank of the default process group is on this host
    (and the CPU keeps stores in order: x86-64). Returns whether it is open; where it cannot be (no
    room in /dev/shm, say), every rank goes on with torch.distributed. A wait on the page ends with
    a PeerLost when a peer has died, or has not arrived within `timeout_s`; `on_lost` gets it first
    (to end the process in its own words)."""
    global _active
    close_host_sum()
    rank, world = dist.get_rank(), dist.get_world_size()
    here = [None] * world
    dist.all_gather_object(here, (os.uname().nodename, platform.machine() in ("x86_64", "AMD64")))
    if world < 2 or len({host for host, _ in here}) > 1 or not all(ordered for _, ordered in here):
        return False
    folder = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    path = os.path.join(folder, f"enformer-train-{os.getpid()}-{secrets.token_hex(6)}")
    if rank == 0:
        try:
            _active = HostSum(path, rank, world, capacity, create=True, timeout_s=timeout_s, on_lost=on_lost)
        except OSError:
            path = None
    shared = [path]
    dist.broadcast_object_list(shared, src=0)
    path = shared[0]
    if path is None:
        return False
    if rank != 0:
        try:
            _active = HostSum(path, rank, world, capacity, create=False, timeout_s=timeout_s, on_lost=on_lost)
        except OSError:
            pass
    opened = [None] * world
    dist.all_gather_object(opened, _active is not None)
    if rank == 0:
        os.unlink(path)  # every rank has it mapped (or gave up): nothing is left behind, however they end
    if not all(opened):
        close_host_sum()
        return False
    dist.barrier()  # the file is gone before any rank goes on
    return True


def dead_ranks() -> list[tuple[int, int]]:
    """(rank, pid) of the ranks on the open page whose process has died; [] without a page."""
    if _active is None:
        return []
    return [(r, int(_active._pids[r])) for r in range(_active.world)
            if r != _active.rank and process_state(int(_active._pids[r])) is None]


def close_host_sum() -> None:
    global _active
    if _active is not None:
        _active.close()
        _active = None
