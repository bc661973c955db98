"""One owner per run folder: an OS lock on run_dir/train.lock, held by rank 0 for the run's life.

The kernel drops the lock when its process dies (SIGKILL, OOM, a crashed node's NFS lease), so
torchrun's restarted workers and a `--resume` after a crash take it again with nothing to clean up.
It is a POSIX record lock (fcntl.lockf), not flock: a flock is shared with every process forked
while it is held (the DataLoader's workers), which can outlive a killed rank 0 by seconds and would
refuse its restarted successor; a record lock belongs to the process alone. Linux's NFS client maps
both to the same network lock.
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
from pathlib import Path

from ..errors import UserError

LOCK_NAME = "train.lock"


class RunFolderBusy(UserError):
    """Another run holds the run folder. Exit status 2, so that a scheduler can tell it from a failure."""

    exit_code = 2


def lock_run_folder(run_dir: str | Path) -> int:
    """Take run_dir's lock (creating the folder) and record who holds it; returns the descriptor,
    which holds the lock until it is closed or the process ends. Raises RunFolderBusy at once if
    another process holds it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EAGAIN):
            os.close(fd)
            raise
        holder = _holder(fd)
        os.close(fd)
        raise RunFolderBusy(f"{run_dir} is in use by another run ({holder}); wait for it to end, stop it, "
                            "or give this run another train.run_dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                               "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")})
                   + "\n").encode(), 0)
    return fd


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"host {info['host']}, pid {info['pid']}, started {info['started']}"
    except (ValueError, KeyError, UnicodeDecodeError):
        return "holder unknown: it has not yet written its name"


def unlock_run_folder(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)
