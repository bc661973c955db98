"""Work in chunks that survive a stop, shared by the ranks of a torchrun: `score-variants` and
`attribute --regions`.

OUT.partial/ holds plan.json (everything that decides the numbers) and one .npz per finished chunk.
A rerun with the same plan does only the chunks that are missing; a rerun with another plan is
refused (or, with --force, starts afresh). Chunk c goes to rank c mod world size among the chunks
not yet done; rank 0 assembles OUT when every rank has finished.
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np

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


def read_chunk(path: str, n: int, keys: list[str]) -> dict[str, np.ndarray] | None:
    """The chunk's arrays `keys`, each with `n` rows; None when it is missing, torn or of other rows."""
    try:
        with np.load(path) as z:
            arrays = {k: z[k] for k in keys}
    except (OSError, ValueError, KeyError, EOFError):
        return None
    return arrays if all(v.shape[0] == n for v in arrays.values()) else None


def file_identity(path: str) -> dict:
    """A cheap identity of an input file (path, size, mtime): a changed file makes another plan."""
    stat = os.stat(path)
    return {"path": os.path.abspath(path), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def start(out: str, plan: dict, sizes: list[int], keys: list[str], force: bool, world, what: str) -> tuple[str, list[int]]:
    """Collective: OUT.partial/ for `plan` (a JSON-able dict) and the chunks still to do, of
    chunks with `sizes[c]` rows of `keys`. A partial folder of another plan is a UserError naming
    `what` decides the numbers, unless `force` (then it is emptied)."""
    from .train.distributed import barrier

    partial = partial_dir(out)
    manifest = os.path.join(partial, "plan.json")
    stale = False
    if os.path.exists(manifest):
        with open(manifest) as f:
            stale = json.load(f) != json.loads(json.dumps(plan))
        if stale and not force:
            raise UserError(f"{partial} holds a stopped run with other inputs or options ({what}); rerun with "
                            "those, or pass --force to start afresh")
    barrier("the barrier before the partial folder is made")
    if world.is_main:
        if stale:
            shutil.rmtree(partial)
        os.makedirs(partial, exist_ok=True)
        if not os.path.exists(manifest):
            write_json(manifest, plan)
    barrier("the barrier after the partial folder is made")
    todo = [c for c, n in enumerate(sizes) if read_chunk(chunk_path(partial, c), n, keys) is None]
    barrier("the barrier after listing the chunks to do")  # before any rank writes one
    return partial, todo
