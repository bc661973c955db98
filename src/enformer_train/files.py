"""Files: local paths and URLs behind the same few calls, and writes that are whole or absent.

Reading: local paths and URLs (gs://, s3://, https://, ...) alike; URLs go through fsspec, imported
only when a URL is used, so local data needs no extra package.

Writing: `atomic_write` and `write_json` write a temporary file beside the target and rename it
into place, so a reader sees the old file or the new one, never half of one. Checkpoints, weights
and stores all write through here.
"""
from __future__ import annotations

import errno
import json
import os
import pickle
import posixpath
import re
import tempfile
import zipfile
from pathlib import Path
from typing import IO, Callable

from .errors import UserError


def is_url(path: str) -> bool:
    return "://" in str(path)


def _fs(url: str):
    try:
        import fsspec  # remote paths only (gs://, s3://)
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


TEMPORARY_SUFFIX = ".tmp"


def temporary_pattern(names: str) -> re.Pattern:
    """The names atomic_write gives its temporary files for targets whose names match the regular
    expression `names`: '.' + name + '.' + mkstemp's 8 random characters + '.tmp'."""
    return re.compile(rf"^\.(?:{names})\.[a-z0-9_]{{8}}{re.escape(TEMPORARY_SUFFIX)}$")


def remove_temporaries(folder: str | os.PathLike, names: str) -> list[Path]:
    """Remove the temporary files that an atomic_write of a target named like `names` (a regular
    expression) left in `folder` when its process was killed; returns the files removed. Nothing
    else is touched."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern = temporary_pattern(names)
    removed = []
    for path in sorted(folder.iterdir()):
        if pattern.match(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def umask() -> int:
    """The process's umask (os.umask can only be read by setting it, so set it back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file or a folder (its entries: a rename, a new file) to disk."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if os.path.isdir(path) else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DiskFullError(UserError):
    """No space left on the device while writing a file; the file was not written."""


def torch_file_problem(path: str | os.PathLike, error: Exception) -> str:
    """What a file that torch.load(weights_only=True) refused is, in words for a user. Never torch's
    own text: it advises weights_only=False, which runs whatever code a foreign file holds."""
    with open(path, "rb") as f:
        head, after = f.read(8), f.read(1)  # safetensors: a little-endian header length, then JSON
    if zipfile.is_zipfile(path):
        if isinstance(error, pickle.UnpicklingError):
            return ("a PyTorch file that holds Python objects besides tensors, which this tool does not "
                    "unpickle (that could run code from the file)")
        return "a damaged PyTorch file"
    if head.startswith(b"PK\x03\x04"):
        return "a PyTorch file cut short (torn by a crash or an incomplete copy)"
    if len(head) == 8 and int.from_bytes(head, "little") < (1 << 27) and after == b"{":
        return "a safetensors file (name it .safetensors)"
    if head[:1] == b"\x80":
        return "a pickle in PyTorch's legacy format, which this tool does not unpickle (that could run code)"
    return "not a PyTorch file (torch.save writes a zip archive)"


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call write(tmp) on a temporary file beside `path`, then rename it into place: the file is
    whole or absent, also after a power cut (the file is flushed before the rename, the folder
    before and after it). The file gets the mode of a file created under the user's umask (mkstemp
    makes 0600; a lab group shares run folders), set after write() since a writer may replace tmp.
    Running out of space is a DiskFullError naming the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask())
        fsync_path(tmp)
        fsync_path(path.parent)
        os.replace(tmp, path)
        fsync_path(path.parent)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.errno == errno.ENOSPC:
            raise DiskFullError(f"{path.parent}: no space left on the device writing {path.name}; "
                                "free some space") from None
        raise
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
