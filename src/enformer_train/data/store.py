"""The training store: fixed-size samples in flat files, read in O(1) by index.

Layout of a store folder (one organism):

    manifest.json             written last, by `prepare`: a store without it (or with "complete"
                              false) is refused
    {split}.sequence.u8       [n, window] uint8 codes, window = context + 2 * max_shift, centred
                              on the BED region (A=0, C=1, G=2, T=3, N=4)
    {split}.target.f16        [n, target_length, num_targets] float16, Basenji's targets
    {split}.regions.bed       chrom, window start, window end, BED line of each sample
    targets.txt, statistics.json   copied from the Basenji folder

Sample i of a split sits at byte i * row_size of each file: no index, no scan, nothing to load when
a store is opened, and a 9.7-MB full-size sample is one read. Files are opened lazily in each
process, so a Store pickles to its path and is cheap in every loader worker.
"""
from __future__ import annotations

import json
import os

import numpy as np

from ..errors import UserError
from .targets import read_strand_pairs

FORMAT = "enformer-train-store"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STATE = "prepare-state.json"


def sequence_file(split: str) -> str:
    return f"{split}.sequence.u8"


def target_file(split: str) -> str:
    return f"{split}.target.f16"


def regions_file(split: str) -> str:
    return f"{split}.regions.bed"


def read_manifest(path: str) -> dict:
    """The manifest of a complete store; a UserError for a missing, unfinished or foreign one."""
    manifest_path = os.path.join(path, MANIFEST)
    if not os.path.exists(manifest_path):
        if os.path.exists(os.path.join(path, STATE)):
            raise UserError(f"{path}: the store is incomplete (its prepare was interrupted or failed); "
                            f"run the same `enformer-train prepare` command again to finish it")
        raise UserError(f"{path}: not a training store (no {MANIFEST}); "
                        f"build one with `enformer-train prepare`")
    with open(manifest_path) as f:
        try:
            manifest = json.load(f)
        except json.JSONDecodeError as e:
            raise UserError(f"{manifest_path}: not valid JSON ({e}); run `enformer-train prepare` again") from None
    if manifest.get("format") != FORMAT:
        raise UserError(f"{manifest_path}: not an {FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{manifest_path}: store format version {manifest.get('format_version')}, this "
                        f"version of enformer-train reads version {FORMAT_VERSION}; prepare the store again")
    if not manifest.get("complete"):
        raise UserError(f"{path}: the store is incomplete (its prepare was interrupted or failed); "
                        f"run the same `enformer-train prepare` command again to finish it")
    return manifest


def _pread_into(fd: int, offset: int, out: np.ndarray, name: str) -> None:
    if not out.flags.c_contiguous:
        raise ValueError("out must be C-contiguous")
    view = memoryview(out.reshape(-1).view(np.uint8))
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            raise UserError(f"{name}: ends early at byte {offset + done}; the store is damaged, prepare it again")
        done += n


class Store:
    """One split of a training store. `store[i]` -> {'sequence': uint8 [window], 'target': float16
    [target_length, num_targets]}, fresh writable arrays."""

    def __init__(self, path: str, split: str):
        self.path = str(path)
        self.split = split
        self.manifest = read_manifest(self.path)
        splits = self.manifest["splits"]
        if split not in splits:
            raise UserError(f"{self.path}: no split {split!r}; this store has {', '.join(splits)}")
        self.organism: str = self.manifest["organism"]
        self.context: int = self.manifest["context"]
        self.max_shift: int = self.manifest["max_shift"]
        self.window: int = self.manifest["window"]
        self.target_length: int = self.manifest["target_length"]
        self.num_targets: int = self.manifest["num_targets"]
        self._count: int = splits[split]["count"]
        self._files = {"sequence": os.path.join(self.path, sequence_file(split)),
                       "target": os.path.join(self.path, target_file(split))}
        self._row = {"sequence": self.window, "target": self.target_length * self.num_targets * 2}
        for key, name in self._files.items():
            expected = self._count * self._row[key]
            actual = os.path.getsize(name) if os.path.exists(name) else -1
            if actual != expected:
                raise UserError(f"{name}: {actual} bytes, expected {expected} for {self._count} samples; "
                                f"the store is damaged, prepare it again")
        self._fds: dict[str, int] = {}
        self._pid = None
        self._strand_pair = None

    def __len__(self) -> int:
        return self._count

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_fds"], state["_pid"] = {}, None
        return state

    def __del__(self):
        if getattr(self, "_pid", None) == os.getpid():
            for fd in self._fds.values():
                try:
                    os.close(fd)
                except OSError:
                    pass

    def _fd(self, key: str) -> int:
        if self._pid != os.getpid():
            self._fds, self._pid = {}, os.getpid()
        if key not in self._fds:
            self._fds[key] = os.open(self._files[key], os.O_RDONLY)
        return self._fds[key]

    def _index(self, i: int) -> int:
        i = int(i)
        if i < 0:
            i += self._count
        if not 0 <= i < self._count:
            raise IndexError(f"sample {i} of a split with {self._count}")
        return i

    def read_sequence(self, i: int, out: np.ndarray | None = None) -> np.ndarray:
        """[window] uint8 codes of sample i (into `out` when given)."""
        i = self._index(i)
        out = np.empty(self.window, dtype=np.uint8) if out is None else out
        _pread_into(self._fd("sequence"), i * self._row["sequence"], out, self._files["sequence"])
        return out

    def read_target(self, i: int, out: np.ndarray | None = None) -> np.ndarray:
        """[target_length, num_targets] float16 targets of sample i (into `out` when given)."""
        i = self._index(i)
        if out is None:
            out = np.empty((self.target_length, self.num_targets), dtype=np.float16)
        _pread_into(self._fd("target"), i * self._row["target"], out, self._files["target"])
        return out

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {"sequence": self.read_sequence(i), "target": self.read_target(i)}

    @property
    def strand_pair(self) -> np.ndarray:
        """[num_targets] permutation swapping stranded track pairs (see targets.strand_pairs)."""
        if self._strand_pair is None:
            path = os.path.join(self.path, "targets.txt")
            if os.path.exists(path):
                self._strand_pair = read_strand_pairs(path)
            else:
                self._strand_pair = np.arange(self.num_targets, dtype=np.int64)
        return self._strand_pair

    def regions(self) -> list[tuple[str, int, int, int]]:
        """(chrom, window start, window end, BED line) of every sample, in order."""
        out = []
        with open(os.path.join(self.path, regions_file(self.split))) as f:
            for line in f:
                chrom, start, end, bed_line = line.rstrip("\n").split("\t")
                out.append((chrom, int(start), int(end), int(bed_line)))
        return out
