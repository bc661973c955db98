"""One process or many: torchrun's environment, the process group and the device."""
from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import UserError
from .host_sum import close_host_sum, dead_ranks, open_host_sum


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


def setup(device: str = "auto", collective_timeout_s: float | None = None, command: str = "train") -> World:
    """Join torchrun's process group (NCCL on CUDA, gloo on CPU) when WORLD_SIZE > 1; choose the device.

    With `collective_timeout_s` (train.collective_timeout_s), every collective is watched: a rank
    that waits longer than that for the others ends its process with one line (see Watchdog)."""
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dev = choose_device(device, local_rank)
    if dev.type == "cpu":
        # Processes sharing a node share its cores: more threads than cores makes every op wait.
        local = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        if local > 1:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    if "TORCHELASTIC_RUN_ID" in os.environ:
        die_with_launcher()
    if world_size > 1 and collective_timeout_s:
        watch_collectives(collective_timeout_s, rank, world_size, command)
    if world_size > 1 and not dist.is_initialized():
        with watching("the process group's rendezvous (init_process_group)"):
            _init_process_group(dev, rank, world_size, collective_timeout_s)
        if dev.type == "cpu":
            with watching("opening the shared page for batch-norm sums (all_gather_object)"):
                open_host_sum(timeout_s=collective_timeout_s, on_lost=lambda e: _page_lost(e, rank, command))
    return World(rank, world_size, local_rank, dev)


def choose_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """--device / train.device: auto (CUDA when visible), cpu, or cuda (this rank's GPU)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise UserError("the device is cuda but no CUDA device is visible; use cpu (train.device=cpu, --device cpu)")
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    if device == "cpu":
        return torch.device("cpu")
    raise UserError(f"the device must be auto, cpu or cuda, got {device!r}")


def _init_process_group(dev: torch.device, rank: int, world_size: int, collective_timeout_s: float | None) -> None:
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
    # The backend's own timeout is the backstop, a minute after the watchdog's clearer message.
    timeout = timedelta(seconds=collective_timeout_s + 60) if collective_timeout_s else timedelta(minutes=30)
    dist.init_process_group(backend, timeout=timeout, **kwargs)


def die_with_launcher() -> None:
    """End this worker at once (SIGKILL, so nothing is saved over the last good checkpoint) when its
    launcher dies: torchrun's workers run in sessions of their own, so a killed torchrun would
    otherwise leave them training, orphaned, into the run folder. Linux only (prctl); a plain
    `train` without torchrun keeps running when its shell goes, as a nohup'd job should."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if parent == 1 or os.getppid() != parent:  # the launcher died before the signal was armed
        os.kill(os.getpid(), signal.SIGKILL)


def teardown() -> None:
    """This process's part of the job ends: the watchdog, the shared page, the process group."""
    global _watchdog
    if _watchdog is not None:
        _watchdog.stop()
        _watchdog = None
    close_host_sum()
    if dist.is_initialized():
        if dist.get_backend() == "gloo":
            # A gloo worker thread may still be releasing the last collective's tensor, which needs
            # the GIL. torch < 2.5 destroys the group holding the GIL while it joins the workers:
            # both wait for ever (one teardown in a dozen on 2 cores). Newer torch does not, but a
            # group that outlives its destroy (DDP's reducer keeps it, torch 2.13) keeps its
            # workers into the interpreter's exit, where one asking for the GIL aborts the process
            # ('terminate called without an active exception': one exit in three straight after a
            # collective). Sleeping lets the worker finish first.
            time.sleep(0.1)
        dist.destroy_process_group()


# -- collectives, each watched ----------------------------------------------------------------------


class Watchdog:
    """Ends this rank's process, with one line naming the collective and the ranks that did not
    arrive, when it has waited in a collective longer than `timeout_s`.

    Every collective of this package runs inside `watching(name)`, and so does each step's
    forward/backward, which holds the collectives of cross-replica batch norm and DDP's gradient
    all-reduce. A rank that has waited half the timeout (at most 10 s) writes where it waits
    into the process group's rendezvous store (torchrun's agent holds it, so it answers while a
    rank is frozen); the rank whose timeout passes first gives the others a little longer to
    write, and the ranks that wrote nothing are the ones that did not arrive: frozen (SIGSTOP, a
    stuck GPU), hung outside any collective (a dead NFS read) or dead. Exiting, rather than
    waiting out the backend's timeout, lets torchrun (--max-restarts) or the scheduler restart
    the job from the last checkpoint; nothing is saved on the way out.
    """

    def __init__(self, timeout_s: float, rank: int, world_size: int, command: str):
        self.timeout_s, self.rank, self.world_size, self.command = timeout_s, rank, world_size, command
        self.where = ""  # what the rank is doing, e.g. 'step 12' (the trainer sets it)
        self._seq = 0  # collectives so far: the same sequence on every rank
        self._region: tuple[int, str, float] | None = None
        self._published = 0
        self._store = None
        self._prefix = f"enformer-train/watchdog/restart-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="collective-watchdog", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def watching(self, name: str):
        self._seq += 1
        self._region = (self._seq, name, time.monotonic())
        try:
            yield
        except RuntimeError as e:
            lost = _lost_connection(e)
            if lost is None:
                raise
            at = f" at {self.where}" if self.where else ""
            _end_process(self.rank, self.command, f"{name}{at}: {_dead_peers() or 'a peer'} ({lost})")
        finally:
            self._region = None

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        publish_after = min(self.timeout_s / 2, 10.0)
        while not self._stopped.wait(min(1.0, self.timeout_s / 20)):
            region = self._region
            if region is None:
                continue
            waited = time.monotonic() - region[2]
            if waited > publish_after and self._published != region[0]:
                self._published = region[0]
                self._set(f"{region[0]}/{self.rank}", region[1])
            if waited > self.timeout_s and self._region is region:
                self._fire(region)

    def _client(self):
        if self._store is None:
            self._store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                                        timeout=timedelta(seconds=10), wait_for_workers=False)
        return self._store

    def _set(self, key: str, value: str) -> bool:
        try:
            self._client().set(f"{self._prefix}/{key}", value)
            return True
        except Exception:  # noqa: BLE001 - the store's host may be the frozen rank; then no names
            return False

    def _fire(self, region: tuple[int, str, float]) -> None:
        seq, name, _ = region
        answered: set[int] = {self.rank}
        reachable = self._set(f"{seq}/{self.rank}", name)
        others = [r for r in range(self.world_size) if r != self.rank]
        deadline = time.monotonic() + min(self.timeout_s / 2, 15.0)
        while reachable and time.monotonic() < deadline and len(answered) < self.world_size:
            try:
                answered |= {r for r in others if self._client().check([f"{self._prefix}/{seq}/{r}"])}
            except Exception:  # noqa: BLE001
                reachable = False
            time.sleep(0.5)
        missing = [r for r in range(self.world_size) if r not in answered]
        at = f" at {self.where}" if self.where else ""
        if not reachable:
            who = "some rank did not arrive (the rendezvous store did not answer to name it)"
        elif missing:
            who = (f"rank{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} did not arrive "
                   "(frozen, hung outside the collective, or dead)")
        else:
            who = "every rank arrived but the collective did not complete (network or NCCL hang)"
        _end_process(self.rank, self.command, f"{name}{at} waited more than {self.timeout_s:g} s "
                                                f"({_timeout_setting(self.command)}): {who}")


_ending = threading.Lock()


def _timeout_setting(command: str) -> str:
    return "train.collective_timeout_s" if command == "train" else "--collective-timeout-s"


def _end_process(rank: int, command: str, what: str) -> None:
    """End this rank's process at once with one line, 'rank R: WHAT; exiting so that ...' (the
    watchdog's thread and a wait on the shared page may both get here: one line only)."""
    _ending.acquire()  # never released: the first to come writes its line and exits
    # rank 0's progress bar holds the terminal's line without a newline: start a line of our own
    newline = "\n" if rank == 0 else ""
    sys.stderr.write(f"{newline}enformer-train {command}: error: rank {rank}: {what}; exiting so that torchrun "
                     "--max-restarts or the scheduler restarts the job from the last checkpoint\n")
    sys.stderr.flush()
    os._exit(1)


_PEER_GONE = re.compile(r"Connection (?:reset|closed) by peer|Broken pipe")
_ADDRESS = re.compile(r"\[([^\]\s]*)\]:(\d+)")


def _lost_connection(error: RuntimeError) -> str | None:
    """gloo's words when `error` says a peer's connection went (reset, closed: its process died
    or its host went down), e.g. 'Connection closed by peer [10.0.0.2]:6100'; None for other errors."""
    text = str(error)
    gone = _PEER_GONE.search(text)
    if gone is None:
        return None
    address = _ADDRESS.search(text)
    return gone.group(0) + (f" [{address.group(1)}]:{address.group(2)}" if address else "")


def _dead_peers() -> str:
    """'rank 1 (pid 1234) died' for the peers on this host whose process has died (the shared page
    knows their pids), or '' when none is known to have died."""
    dead = dead_ranks()
    if not dead:
        return ""
    return "; ".join(f"rank {r} (pid {pid}) died" for r, pid in dead)


def _page_lost(error, rank: int, command: str) -> None:
    """A wait on the shared page of batch-norm sums found a peer dead, or missing past the timeout."""
    where = _watchdog.where if _watchdog is not None and _watchdog.where else ""
    what = "the batch-norm sums on the host's shared page" + (f" at {where}" if where else "")
    if error.dead:
        _end_process(rank, command, f"{what}: {error.who} after {error.waited_s:.1f} s of waiting for it")
    _end_process(rank, command, f"{what} waited more than {error.timeout_s:g} s ({_timeout_setting(command)}): "
                                f"{error.who}")


_watchdog: Watchdog | None = None


def watch_collectives(timeout_s: float, rank: int, world_size: int, command: str) -> None:
    global _watchdog
    if _watchdog is None and world_size > 1:
        _watchdog = Watchdog(timeout_s, rank, world_size, command)


def set_where(where: str) -> None:
    """What this rank is doing, for the watchdog's message (e.g. 'step 12', 'validation at step 10')."""
    if _watchdog is not None:
        _watchdog.where = where


def watching(name: str):
    """A context in which this rank may wait for the others: watched when a timeout is set."""
    return _watchdog.watching(name) if _watchdog is not None else contextlib.nullcontext()


def all_reduce_(t: torch.Tensor, op=None, what: str = "all_reduce") -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        with watching(what):
            dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t


def all_gather_objects(obj, what: str = "all_gather_object") -> list:
    if dist.is_initialized() and dist.get_world_size() > 1:
        out = [None] * dist.get_world_size()
        with watching(what):
            dist.all_gather_object(out, obj)
        return out
    return [obj]


def barrier(what: str = "barrier") -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        with watching(what):
            dist.barrier()
