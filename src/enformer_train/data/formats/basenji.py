"""Basenji's training data: TFRecord files of tf.train.Example records, statistics.json, targets.txt.

The TFRecord framing and compression are tfrecord.py's; here is the small part of the Example
protobuf that Basenji uses (a map of names to bytes_list features), read and written directly
without TensorFlow, and the layout of Basenji organism folders.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ...errors import UserError
from ... import files
from .tfrecord import TFRecordWriter, read_tfrecords

# ---------------------------------------------------------------------------------------------
# tf.train.Example: Example{features=1: Features{feature=1: map<string, Feature>}},
# Feature{bytes_list=1 | float_list=2 | int64_list=3}, BytesList{value=1: repeated bytes}.


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: memoryview) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value) of a protobuf message; LEN values as memoryviews."""
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            if pos + n > len(buf):
                raise ValueError("field runs past the end of the message")
            value, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield number, wire, value


_KINDS = {1: "bytes_list", 2: "float_list", 3: "int64_list"}


def parse_example(payload) -> dict[str, object]:
    """Features of a serialized tf.train.Example: name -> list of memoryviews for bytes_list
    features, or the kind's name ('float_list', 'int64_list') for the others (not decoded)."""
    out: dict[str, object] = {}
    try:
        for number, wire, features in _fields(memoryview(payload)):
            if number != 1 or wire != 2:
                continue
            for number, wire, entry in _fields(features):
                if number != 1 or wire != 2:
                    continue
                key, feature = "", memoryview(b"")
                for number, wire, value in _fields(entry):
                    if number == 1 and wire == 2:
                        key = value.tobytes().decode("utf-8")
                    elif number == 2 and wire == 2:
                        feature = value
                kind, values = None, []
                for number, wire, value in _fields(feature):
                    kind = _KINDS.get(number)
                    if number == 1 and wire == 2:
                        values = [v for n, w, v in _fields(value) if n == 1 and w == 2]
                out[key] = values if kind in (None, "bytes_list") else kind
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"not a tf.train.Example ({e})") from None
    return out


def _len_field(number: int, data: bytes) -> bytes:
    n, size = len(data), bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        size.append(byte | (0x80 if n else 0))
        if not n:
            break
    return bytes([number << 3 | 2]) + bytes(size) + data


def encode_example(features: dict[str, bytes]) -> bytes:
    """Serialize a tf.train.Example whose features are single-value bytes_lists."""
    entries = b"".join(
        _len_field(1, _len_field(1, key.encode("utf-8")) + _len_field(2, _len_field(1, _len_field(1, value))))
        for key, value in features.items()
    )
    return _len_field(1, entries)


# ---------------------------------------------------------------------------------------------
# Basenji organism folders.


@dataclass(frozen=True)
class Statistics:
    """statistics.json of a Basenji organism folder (only the fields used here)."""

    seq_length: int
    pool_width: int
    target_length: int
    num_targets: int
    crop_bp: int
    counts: dict  # split -> number of sequences (train_seqs, valid_seqs, test_seqs)
    # baskerville's hound tools write `"seq_1hot": true` and store each sequence as [seq_length] uint8
    # base indices (0-3 = ACGT, 4 = N), one-hot only when read; the 2021 Basenji data store one-hot bytes.
    seq_1hot: bool = False

    @classmethod
    def read(cls, path: str) -> "Statistics":
        try:
            raw = json.loads(files.read_text(path))
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not valid JSON ({e}); download statistics.json again") from None
        missing = [k for k in ("seq_length", "target_length", "num_targets") if k not in raw]
        if missing:
            raise UserError(f"{path}: missing {', '.join(missing)}; expected Basenji's statistics.json")
        counts = {k[:-5]: int(v) for k, v in raw.items() if k.endswith("_seqs")}
        return cls(seq_length=int(raw["seq_length"]), pool_width=int(raw.get("pool_width", 128)),
                   target_length=int(raw["target_length"]), num_targets=int(raw["num_targets"]),
                   crop_bp=int(raw.get("crop_bp", 0)), counts=counts, seq_1hot=bool(raw.get("seq_1hot", False)))

    def to_json(self) -> dict:
        out = {"seq_length": self.seq_length, "pool_width": self.pool_width, "crop_bp": self.crop_bp,
               "target_length": self.target_length, "num_targets": self.num_targets}
        out.update({f"{split}_seqs": n for split, n in self.counts.items()})
        if self.seq_1hot:
            out["seq_1hot"] = True
        return out


def _file_number(name: str) -> int:
    match = re.search(r"-(\d+)\.tfr(ecords?)?$", name)
    return int(match.group(1)) if match else -1


def tfrecord_folder(folder: str) -> str:
    """The folder holding the .tfr files: FOLDER/tfrecords if it exists, else FOLDER itself."""
    sub = files.join(folder, "tfrecords")
    return sub if files.is_dir(sub) else folder


def split_files(folder: str, split: str) -> list[str]:
    """The split's TFRecord files in numeric order (train-2 before train-10)."""
    where = tfrecord_folder(folder)
    names = [n for n in files.list_names(where)
             if n.startswith(f"{split}-") and _file_number(n) >= 0]
    if not names:
        raise UserError(f"{where}: no {split}-N.tfr files; expected a Basenji organism folder "
                        f"(statistics.json, tfrecords/{split}-0.tfr, ...)")
    names.sort(key=_file_number)
    numbers = [_file_number(n) for n in names]
    if numbers != list(range(len(numbers))):
        missing = sorted(set(range(max(numbers) + 1)) - set(numbers))
        raise UserError(f"{where}: {split} files are not numbered 0..{len(numbers) - 1} "
                        f"(missing {split}-{missing[0] if missing else '?'}); download the missing files")
    return [files.join(where, n) for n in names]


def onehot_to_codes(onehot: np.ndarray) -> np.ndarray:
    """[length, 4] one-hot (ACGT, N = all zero) -> [length] uint8 codes 0-3, 4 for N.

    Rows with more than one 1 are not one-hot and raise ValueError.
    """
    words = np.ascontiguousarray(onehot, dtype=np.uint8).view("<u4").reshape(-1)
    # A, C, G, T set byte 0, 1, 2, 3 of the little-endian word: 1, 2^8, 2^16, 2^24.
    keys = np.array([0, 1, 1 << 8, 1 << 16, 1 << 24], dtype=np.uint32)
    where = np.searchsorted(keys, words)
    bad = (where >= len(keys)) | (keys[np.minimum(where, len(keys) - 1)] != words)
    if bad.any():
        raise ValueError(f"position {int(np.argmax(bad))} is not one-hot")
    return np.array([4, 0, 1, 2, 3], dtype=np.uint8)[where]


_INDEX_TO_ONEHOT = np.eye(5, 4, dtype=np.uint8)  # index 4 (N) -> the all-zero row


def indices_to_onehot(indices: np.ndarray) -> np.ndarray:
    """[length] uint8 base indices (baskerville: 0-3 = ACGT, 4 = N) -> [length, 4] uint8 one-hot.
    An index above 4 raises ValueError."""
    if indices.size and indices.max() > 4:
        raise ValueError(f"position {int(np.argmax(indices > 4))} holds base index {int(indices.max())}, "
                         f"expected 0-4")
    return _INDEX_TO_ONEHOT[indices]


def _parent(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[0] if files.is_url(path) else os.path.dirname(os.path.abspath(path))


class BasenjiRecords:
    """The records of one Basenji TFRecord file, or of one split of an organism folder.

    Yields {'sequence': uint8 one-hot [seq_length, 4], 'target': float16 [target_length, num_targets]}
    in file order (records of either encoding, one-hot bytes or baskerville's base indices, by
    statistics.json's seq_1hot checked against the byte count), the files in numeric order, so record i of a split is row i of that split in
    sequences.bed. Shapes come from statistics.json: the organism folder's, or for a single file the
    one in its folder or the folder above (or pass `statistics`).
    """

    def __init__(self, path: str, split: str | None = None, statistics: Statistics | str | None = None,
                 compression: str = "auto"):
        path = str(path)
        self.path = path
        if files.is_dir(path):
            if split is None:
                raise UserError(f"{path}: a folder needs a split (train, valid or test)")
            self.files = split_files(path, split)
            folder = path
        else:
            if not files.exists(path):
                raise UserError(f"{path}: no such file or folder")
            self.files = [path]
            folder = _parent(path)
        self.split = split
        if isinstance(statistics, Statistics):
            self.statistics = statistics
        else:
            candidates = [statistics] if statistics else [
                files.join(folder, "statistics.json"), files.join(_parent(folder), "statistics.json")]
            found = [c for c in candidates if files.exists(c)]
            if not found:
                raise UserError(f"{path}: no statistics.json beside it or in the folder above; "
                                f"pass the organism folder or statistics=")
            self.statistics = Statistics.read(found[0])
        self.compression = compression

    def __len__(self) -> int:
        if self.split is None or self.split not in self.statistics.counts:
            raise TypeError("the number of records is known only for a split of an organism folder")
        return self.statistics.counts[self.split]

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for path in self.files:
            yield from self.iter_file(path)

    def iter_file(self, path: str) -> Iterator[dict[str, np.ndarray]]:
        stats = self.statistics
        seq_bytes = stats.seq_length if stats.seq_1hot else stats.seq_length * 4
        target_bytes = stats.target_length * stats.num_targets * 2
        for index, payload in enumerate(read_tfrecords(path, self.compression)):
            try:
                features = parse_example(payload)
            except ValueError as e:
                raise UserError(f"{path}: record {index} (counting from 0): {e}") from None
            arrays = {}
            for key, size in (("sequence", seq_bytes), ("target", target_bytes)):
                value = features.get(key)
                if not isinstance(value, list) or len(value) != 1:
                    what = "missing" if value is None else f"a {value}" if isinstance(value, str) else f"{len(value)} values"
                    raise UserError(f"{path}: record {index} (counting from 0): feature {key!r} is {what}; "
                                    f"expected one bytes value (Basenji's format)")
                if key == "sequence" and len(value[0]) != size and len(value[0]) in (stats.seq_length,
                                                                                     4 * stats.seq_length):
                    stored = "one base index a byte" if len(value[0]) == stats.seq_length else "one-hot, 4 bytes a base"
                    raise UserError(
                        f"{path}: record {index} (counting from 0): 'sequence' has {len(value[0])} bytes "
                        f"({stored}), but statistics.json says seq_1hot {str(stats.seq_1hot).lower()}, which "
                        f"means {size} bytes; check that statistics.json belongs to these records")
                if len(value[0]) != size:
                    raise UserError(
                        f"{path}: record {index} (counting from 0): {key!r} has {len(value[0])} bytes, "
                        f"expected {size} from statistics.json (seq_length {stats.seq_length}, "
                        f"target_length {stats.target_length}, num_targets {stats.num_targets}); "
                        f"check that statistics.json belongs to these records")
                arrays[key] = value[0]
            sequence = np.frombuffer(arrays["sequence"], dtype=np.uint8)
            if stats.seq_1hot:
                try:
                    sequence = indices_to_onehot(sequence)
                except ValueError as e:
                    raise UserError(f"{path}: record {index} (counting from 0): 'sequence': {e}") from None
            yield {
                "sequence": sequence.reshape(stats.seq_length, 4),
                "target": np.frombuffer(arrays["target"], dtype="<f2").reshape(stats.target_length,
                                                                                stats.num_targets),
            }


def write_records(path: str, samples, compression: str = "ZLIB", seq_1hot: bool = False) -> int:
    """Write {'sequence': one-hot [L, 4], 'target': float16 [T, N]} samples as a Basenji TFRecord file
    (with seq_1hot, sequences as baskerville stores them: [L] uint8 base indices, 4 = N)."""
    n = 0
    with TFRecordWriter(path, compression) as writer:
        for sample in samples:
            sequence = np.ascontiguousarray(sample["sequence"], dtype=np.bool_)
            if seq_1hot:
                sequence = np.where(sequence.any(axis=1), sequence.argmax(axis=1), 4).astype(np.uint8)
            writer.write(encode_example({
                "sequence": sequence.tobytes(),
                "target": np.ascontiguousarray(sample["target"], dtype="<f2").tobytes(),
            }))
            n += 1
    return n
