"""Files: local paths and URLs behind the same few calls, and writes that are whole or absent.

Reading: local paths and URLs (gs://, s3://, https://, ...) alike; URLs go through fsspec, imported
only when a URL is used, so local data needs no extra package.

Writing: `atomic_write` and `write_json` write a temporary file beside the target and rename it
into place, so a reader sees the old file or the new one, never half of one. Checkpoints, weights
and stores all write through here.
"""
from __future__ import annotations

import json
import os
import posixpath
import tempfile
from pathlib import Path
from typing import IO, Callable

from .errors import UserError


def is_url(path: str) -> bool:
    return "://" in str(path)


def _fs(url: str):
    try:
        import fsspec
    except ImportError:
        raise UserError(
            f"{url}: reading URLs needs fsspec and the package for its protocol "
            f"(for gs:// run `pip install fsspec gcsfs`), or download the files and give a local path"
        ) from None
    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:
        raise UserError(f"{url}: cannot open this URL ({e}); install the fsspec package for its protocol "
                        f"(gcsfs for gs://, s3fs for s3://) or download the files") from None


def join(path: str, *parts: str) -> str:
    path = str(path)
    return posixpath.join(path, *parts) if is_url(path) else os.path.join(path, *parts)


def open_binary(path: str) -> IO[bytes]:
    """A file object for reading bytes, streamed (never the whole file in memory)."""
    path = str(path)
    if is_url(path):
        fs, inner = _fs(path)
        try:
            return fs.open(inner, "rb")
        except FileNotFoundError:
            raise UserError(f"{path}: no such file") from None
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None


def read_text(path: str) -> str:
    with open_binary(path) as f:
        return f.read().decode("utf-8")


def exists(path: str) -> bool:
    path = str(path)
    if is_url(path):
        fs, inner = _fs(path)
        return fs.exists(inner)
    return os.path.exists(path)


def is_dir(path: str) -> bool:
    path = str(path)
    if is_url(path):
        fs, inner = _fs(path)
        return fs.isdir(inner)
    return os.path.isdir(path)


def list_names(path: str) -> list[str]:
    """Names (not paths) of the entries of a folder."""
    path = str(path)
    if is_url(path):
        fs, inner = _fs(path)
        return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(inner, detail=False))
    return sorted(os.listdir(path))


def size(path: str) -> int:
    path = str(path)
    if is_url(path):
        fs, inner = _fs(path)
        return int(fs.size(inner))
    return os.path.getsize(path)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call write(tmp) on a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, value) -> None:
    """`value` as indented JSON at `path`, flushed to disk, replacing the file atomically."""
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(value, f, indent=2)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, write)
