"""The training store: fixed-size samples in flat files, read in O(1) by index.

Layout of a store folder (one organism):

    manifest.json             written last, by StoreWriter.finish: a store without it (or with
                              "complete" false) is refused
    prepare-state.json        while a store is being written: the units of work done so far
    {split}.sequence.u8       [n, window] uint8 codes, window = sequence_length + 2 * max_shift, centred
                              on the BED region (A=0, C=1, G=2, T=3, N=4)
    {split}.target.f16        [n, target_length, num_targets] float16, Basenji's targets
    {split}.regions.bed       chrom, window start, window end, BED line of each sample
    targets.txt, statistics.json   copied from the Basenji folder

Sample i of a split sits at byte i * row_size of each file: no index, no scan, nothing to load when
a store is opened, and a 9.7-MB full-size sample is one read. Files are opened lazily in each
process, so a Store pickles to its path and is cheap in every loader worker.

Store reads a store; StoreWriter writes one, for any producer (Basenji records in prepare.py, and
any other source of targets over the same BED regions).
"""
from __future__ import annotations

import json
import os

import numpy as np

from .. import files
from ..errors import UserError
from .formats.intervals import SPLITS, Region
from .formats.targets import read_strand_pairs, read_targets

FORMAT = "enformer-train-store"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STATE = "prepare-state.json"
TARGETS = "targets.txt"
STATISTICS = "statistics.json"


def sequence_file(split: str) -> str:
    return f"{split}.sequence.u8"


def target_file(split: str) -> str:
    return f"{split}.target.f16"


def regions_file(split: str) -> str:
    return f"{split}.regions.bed"


def targets_path(store: str) -> str:
    """The targets.txt of the store folder `store` (track names and strands; absent in some stores)."""
    return os.path.join(str(store), TARGETS)


def track_rows(store: Store) -> list[dict[str, str]]:
    """The store's targets.txt rows (empty when the store has none)."""
    path = targets_path(store.path)
    return read_targets(path) if os.path.exists(path) else []


def _current_names(manifest: dict) -> dict:
    """A manifest (and its fingerprint) with this version's key names: stores prepared before the
    input length was called sequence_length everywhere have "context" instead, and stores prepared
    with --records-per-file have it in their fingerprint."""
    def renamed(d):
        if isinstance(d, dict) and "context" in d and "sequence_length" not in d:
            d = {("sequence_length" if k == "context" else k): v for k, v in d.items()}
        if isinstance(d, dict) and "records_per_file" in d:
            # stores prepared when prepare took --records-per-file; it now counts each file's records
            d = {k: v for k, v in d.items() if k != "records_per_file"}
        return d

    manifest = renamed(manifest)
    if "fingerprint" in manifest:
        manifest = {**manifest, "fingerprint": renamed(manifest["fingerprint"])}
    return manifest


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
    manifest = _current_names(manifest)
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
        self.sequence_length: int = self.manifest["sequence_length"]
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
            path = targets_path(self.path)
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


NONFINITE_POLICIES = ("refuse", "zero")


def check_targets(target: np.ndarray, policy: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(targets, count per track of the non-finite values replaced) for one sample's
    [target_length, num_targets] targets: NaN or infinite values are a UserError naming `where`
    (the record) and the tracks, or with policy 'zero' become 0 and are counted."""
    target = np.asarray(target)
    bad = ~np.isfinite(target)
    counts = bad.sum(axis=0).astype(np.int64)
    if not counts.any():
        return target, counts
    if policy != "zero":
        tracks = np.flatnonzero(counts)
        shown = ", ".join(f"track {t} ({counts[t]} values)" for t in tracks[:5])
        raise UserError(f"{where}: non-finite targets (NaN or inf) in {shown}"
                        f"{f' and {len(tracks) - 5} more tracks' if len(tracks) > 5 else ''}; fix the source, or "
                        f"pass --nonfinite-targets zero to store them as 0 (and have them counted)")
    return np.where(bad, 0, target).astype(target.dtype), counts


def _window_start(region: Region, sequence_length: int, max_shift: int) -> int:
    return region.start + (len(region) - sequence_length) // 2 - max_shift


class StoreWriter:
    """Writes a store (the layout above) from any source, resumably. A producer:

        writer = StoreWriter(out, organism, regions, sequence_length=..., max_shift=..., target_length=...,
                             num_targets=..., inputs={...}, sources={...}, restart=False)
        if writer.complete:                        # the same store is already there
            return writer.manifest
        for each unit of work not in writer.done(split) (or done from a source since changed):
            chrom, start, end = writer.window_of(split, i)   # the genome window of sample i
            writer.write(split, i, codes, targets)        # any process, any order
            writer.sync(split)                            # in the process that wrote
            writer.mark_done(split, unit, record)         # in the process that made the writer
        manifest = writer.finish(targets_text=..., statistics=..., extra={...})

    regions: {split: [Region]} the BED regions of each split, in sample order; sample i of a split
    is centred on regions[split][i], with a window of sequence_length + 2 * max_shift bases. Samples are
    [window] uint8 codes (A=0, C=1, G=2, T=3, N=4) and [target_length, num_targets] float16 targets.

    inputs: what the store depends on besides these arguments (input paths, options): a JSON-able
    dict that, with organism, sequence_length, max_shift and the splits, is the store's fingerprint.
    sources: a JSON-able description of the inputs kept in the manifest; a rerun with the same
    fingerprint and sources finds the store complete.

    A unit of work is any group of samples the producer names (a TFRecord file in prepare), and its
    record a JSON-able dict the producer keeps with it (e.g. the size of the source it came from, to
    convert a replaced source again). Records survive an interruption in STATE: a rerun with the same
    fingerprint resumes, one with another fingerprint starts clean. A folder holding a store made
    otherwise is refused unless `restart`; a folder holding anything else is always refused.
    """

    def __init__(self, path: str, organism: str, regions: dict[str, list[Region]], *, sequence_length: int,
                 max_shift: int, target_length: int, num_targets: int, inputs: dict, sources: dict,
                 restart: bool = False):
        self.path = str(path)
        self.organism = organism
        self.regions = regions
        self.splits = list(regions)
        self.sequence_length, self.max_shift = sequence_length, max_shift
        self.window = sequence_length + 2 * max_shift
        self.target_length, self.num_targets = target_length, num_targets
        self.target_bytes = target_length * num_targets * 2
        self.sources = sources
        self.fingerprint = {"format_version": FORMAT_VERSION, "organism": organism,
                            "sequence_length": sequence_length,
                            "max_shift": max_shift, "splits": self.splits, **inputs}
        self.manifest: dict | None = None
        self.complete = False
        self._fds: dict[tuple[str, str], int] = {}
        self._pid = None
        self._state = self._open(restart)

    # --- resume, restart clean, or refuse a folder that is not ours ---------------------------

    def _ours(self) -> list[str]:
        return [MANIFEST, STATE, TARGETS, STATISTICS] + [
            f(s) for s in SPLITS for f in (sequence_file, target_file, regions_file)]

    def _open(self, restart: bool) -> dict | None:
        out = self.path
        manifest_path, state_path = os.path.join(out, MANIFEST), os.path.join(out, STATE)
        state = None
        if os.path.exists(manifest_path):
            with open(manifest_path) as f:
                manifest = _current_names(json.load(f))
            if (manifest.get("complete") and manifest.get("fingerprint") == self.fingerprint
                    and manifest.get("sources") == self.sources):
                self.manifest, self.complete = manifest, True
                return None
            if not restart:
                raise UserError(f"{out}: holds a store made from other inputs or options; choose another --out, "
                                f"or pass --restart to replace it")
        if os.path.exists(state_path) and not restart:
            with open(state_path) as f:
                try:
                    state = json.load(f)
                except json.JSONDecodeError:
                    state = None
            if state is not None and _current_names(state).get("fingerprint") != self.fingerprint:
                state = None  # other inputs or options: start clean
        elif os.path.isdir(out) and not os.path.exists(state_path) and not os.path.exists(manifest_path):
            foreign = [n for n in os.listdir(out) if n not in self._ours() and not n.endswith(".tmp")]
            if foreign:
                raise UserError(f"{out}: exists and holds other files ({foreign[0]}, ...); choose an empty or new folder")
        os.makedirs(out, exist_ok=True)
        if state is None:
            state = self._allocate()
        return state

    def _allocate(self) -> dict:
        """Remove what an earlier run left, create sparse sample files and the regions files."""
        for name in self._ours():
            if os.path.exists(os.path.join(self.path, name)):
                os.remove(os.path.join(self.path, name))
        state = {"fingerprint": self.fingerprint, "done": {split: {} for split in self.splits}}
        for split in self.splits:
            n = len(self.regions[split])
            for name, size in ((sequence_file(split), n * self.window), (target_file(split), n * self.target_bytes)):
                with open(os.path.join(self.path, name), "wb") as f:
                    f.truncate(size)  # sparse until written
            with open(os.path.join(self.path, regions_file(split)), "w") as f:
                for region in self.regions[split]:
                    start = _window_start(region, self.sequence_length, self.max_shift)
                    f.write(f"{region.chrom}\t{start}\t{start + self.window}\t{region.line}\n")
        files.write_json(os.path.join(self.path, STATE), state)
        return state

    # --- the producer's side ------------------------------------------------------------------

    def done(self, split: str) -> dict[str, dict]:
        """{unit: record} of the units of `split` written by this or an earlier run."""
        return self._state["done"][split]

    def mark_done(self, split: str, unit: str, record: dict) -> None:
        """Record that every sample of `unit` is written and synced (in the process that made the writer)."""
        self._state["done"][split][str(unit)] = record
        files.write_json(os.path.join(self.path, STATE), self._state)

    def window_of(self, split: str, i: int) -> tuple[str, int, int]:
        """(chrom, start, end) of sample i's window: its region centred in sequence_length + 2 * max_shift bases."""
        region = self.regions[split][i]
        start = _window_start(region, self.sequence_length, self.max_shift)
        return region.chrom, start, start + self.window

    def _fd(self, split: str, key: str) -> int:
        if self._pid != os.getpid():
            self._fds, self._pid = {}, os.getpid()
        if (split, key) not in self._fds:
            name = (sequence_file if key == "sequence" else target_file)(split)
            self._fds[split, key] = os.open(os.path.join(self.path, name), os.O_WRONLY)
        return self._fds[split, key]

    def write(self, split: str, i: int, sequence: np.ndarray, target: np.ndarray) -> None:
        """Write sample i: sequence [window] uint8 codes, target [target_length, num_targets] (stored float16)."""
        os.pwrite(self._fd(split, "sequence"), np.ascontiguousarray(sequence, dtype=np.uint8).tobytes(),
                  i * self.window)
        os.pwrite(self._fd(split, "target"), np.ascontiguousarray(target, dtype="<f2").data, i * self.target_bytes)

    def sync(self, split: str) -> None:
        """Flush what this process wrote to `split` to disk, before its units are marked done."""
        os.fdatasync(self._fd(split, "sequence"))
        os.fdatasync(self._fd(split, "target"))

    def close(self) -> None:
        """Close this process's files (each process that wrote closes its own)."""
        if self._pid == os.getpid():
            for fd in self._fds.values():
                os.close(fd)
        self._fds, self._pid = {}, None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_fds"], state["_pid"] = {}, None
        return state

    def finish(self, targets_text: str | None = None, statistics: dict | None = None,
               extra: dict | None = None, split_extra: dict[str, dict] | None = None) -> dict:
        """Copy targets.txt and statistics.json in, write the manifest that makes the store readable
        (atomically, last), drop the resume state; returns the manifest. `extra` adds producer keys to
        the manifest, `split_extra` to each split's entry."""
        if targets_text is not None:
            with open(targets_path(self.path), "w") as f:
                f.write(targets_text)
        if statistics is not None:
            files.write_json(os.path.join(self.path, STATISTICS), statistics)
        split_extra = split_extra or {}
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "complete": True, "organism": self.organism,
            "sequence_length": self.sequence_length, "max_shift": self.max_shift, "window": self.window,
            "target_length": self.target_length, "num_targets": self.num_targets, **(extra or {}),
            "splits": {split: {"count": len(self.regions[split]), "sequence": sequence_file(split),
                               "target": target_file(split), "regions": regions_file(split),
                               **split_extra.get(split, {})} for split in self.splits},
            "sources": self.sources, "fingerprint": self.fingerprint,
        }
        files.write_json(os.path.join(self.path, MANIFEST), manifest)
        os.remove(os.path.join(self.path, STATE))
        self.manifest, self.complete = manifest, True
        return manifest
