"""Work in chunks that survive a stop, shared by the ranks of a torchrun: `score-variants` and
`attribute --regions`.

OUT.partial/ holds plan.json (everything that decides the numbers) and one .npz per finished chunk.
A rerun with the same plan does only the chunks that are missing; a rerun with another plan is
refused (or, with --force, starts afresh). Chunk c goes to rank c mod world size among the chunks
not yet done; rank 0 assembles OUT when every rank has finished.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np

from .distributed import barrier
from .errors import UserError
from .files import atomic_write, write_json


def partial_dir(out: str) -> str:
    return out + ".partial"


def chunk_path(partial: str, c: int) -> str:
    return os.path.join(partial, f"chunk-{c:06d}.npz")


def write_chunk(path: str, arrays: dict[str, np.ndarray]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)


def read_chunk(path: str, n: int, keys: list[str], other: tuple[str, ...] | list[str] = ()) -> dict[str, np.ndarray] | None:
    """The chunk's arrays `keys`, each with `n` rows, and `other` (of any rows); None when it is
    missing, torn or of other rows."""
    try:
        with np.load(path) as z:
            arrays = {k: z[k] for k in [*keys, *other]}
    except (OSError, ValueError, KeyError, EOFError):
        return None
    return arrays if all(arrays[k].shape[0] == n for k in keys) else None


def file_identity(path: str, checksum: bool = False) -> dict:
    """A cheap identity of an input file or folder (path, size, mtime) and, with `checksum`, the
    SHA-256 of its bytes (a folder's: of its files in name order): a changed input makes another plan."""
    stat = os.stat(path)
    identity = {"path": os.path.abspath(path), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if checksum:
        digest = hashlib.sha256()
        files = [path] if os.path.isfile(path) else sorted(
            os.path.join(path, name) for name in os.listdir(path) if os.path.isfile(os.path.join(path, name)))
        for name in files:
            digest.update(os.path.basename(name).encode() + b"\0")
            with open(name, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    digest.update(block)
        identity["sha256"] = digest.hexdigest()
    return identity


def _changed(old: dict, new: dict) -> list[str]:
    """The top-level keys whose values differ between two plans (a key in one only counts)."""
    return [k for k in dict.fromkeys([*new, *old]) if old.get(k) != new.get(k)]


def start(out: str, plan: dict, sizes: list[int], keys: list[str], force: bool, world, what: str) -> tuple[str, list[int]]:
    """Collective: OUT.partial/ for `plan` (a JSON-able dict) and the chunks still to do, of
    chunks with `sizes[c]` rows of `keys`. A partial folder of another plan is a UserError naming
    `what` decides the numbers, unless `force` (then it is emptied)."""
    partial = partial_dir(out)
    manifest = os.path.join(partial, "plan.json")
    changed: list[str] = []
    if os.path.exists(manifest):
        with open(manifest) as f:
            changed = _changed(json.load(f), json.loads(json.dumps(plan)))
        if changed and not force:
            raise UserError(f"{partial} holds a stopped run with other inputs or options: {', '.join(changed)} "
                            f"changed (of {what}); rerun with those, or pass --force to start afresh")
    barrier("the barrier before the partial folder is made")
    if world.is_main:
        if changed:
            shutil.rmtree(partial)
        os.makedirs(partial, exist_ok=True)
        if not os.path.exists(manifest):
            write_json(manifest, plan)
    barrier("the barrier after the partial folder is made")
    todo = [c for c, n in enumerate(sizes) if read_chunk(chunk_path(partial, c), n, keys) is None]
    barrier("the barrier after listing the chunks to do")  # before any rank writes one
    return partial, todo
