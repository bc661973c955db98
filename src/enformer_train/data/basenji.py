"""Basenji's training data: TFRecord files of tf.train.Example records, statistics.json, targets.txt.

Neither TensorFlow nor the `tfrecord` package is used: the framing (length, masked CRC-32C of the
length, payload, masked CRC-32C of the payload), the ZLIB/GZIP compression and the small part of the
Example protobuf that Basenji uses (a map of names to bytes_list features) are read here directly.
So it runs beside TensorFlow in one process, checks both CRCs of every record, and streams: a file
is never held in memory whole.
"""
from __future__ import annotations

import json
import os
import re
import struct
import zlib
from dataclasses import dataclass
from typing import IO, Iterator

import numpy as np

from ..errors import UserError
from .. import files
from .crc32c import masked_crc32c

_READ_CHUNK = 1 << 20
_MAX_RECORD = 1 << 31  # a length beyond 2 GiB is a corrupt header, not a record
COMPRESSIONS = ("ZLIB", "GZIP", "NONE")


class _CorruptRecord(Exception):
    """Raised inside the reader, turned into a UserError naming the file and the record."""


# ---------------------------------------------------------------------------------------------
# Byte streams: uncompressed, ZLIB (zlib-wrapped deflate) or GZIP, read in chunks.


class _ByteStream:
    def __init__(self, fileobj: IO[bytes], compression: str):
        self._file = fileobj
        self._wbits = {"ZLIB": 15, "GZIP": 31, "NONE": None}[compression]
        self._inflater = zlib.decompressobj(self._wbits) if self._wbits else None
        self._chunk = memoryview(b"")

    def _more(self) -> bytes:
        """The next piece of uncompressed bytes; b'' at a clean end of the file."""
        if self._inflater is None:
            return self._file.read(_READ_CHUNK)
        while True:
            inflater = self._inflater
            if inflater.eof:
                # Concatenated streams (gzip members) are read one after another.
                pending = inflater.unused_data or self._file.read(_READ_CHUNK)
                if not pending:
                    return b""
                self._inflater = inflater = zlib.decompressobj(self._wbits)
            elif inflater.unconsumed_tail:
                pending = inflater.unconsumed_tail
            else:
                pending = self._file.read(_READ_CHUNK)
                if not pending:
                    raise _CorruptRecord("the compressed stream ends early (file truncated)")
            try:
                out = inflater.decompress(pending, _READ_CHUNK)
            except zlib.error as e:
                raise _CorruptRecord(f"compressed data is corrupt ({e})") from None
            if out:
                return out

    def read(self, n: int) -> bytes:
        """Exactly n bytes, or fewer only at the end of the file."""
        if len(self._chunk) >= n:
            out = self._chunk[:n]
            self._chunk = self._chunk[n:]
            return out.tobytes()
        pieces = [self._chunk]
        have = len(self._chunk)
        while have < n:
            more = self._more()
            if not more:
                self._chunk = memoryview(b"")
                return b"".join(pieces)
            more = memoryview(more)
            take = min(n - have, len(more))
            pieces.append(more[:take])
            have += take
            self._chunk = more[take:]
        return b"".join(pieces)


def detect_compression(path: str) -> str:
    """'ZLIB', 'GZIP' or 'NONE' from a file's first bytes (a valid first header means uncompressed)."""
    with files.open_binary(path) as f:
        head = f.read(12)
    if len(head) >= 2 and head[0] == 0x1F and head[1] == 0x8B:
        return "GZIP"
    if len(head) == 12 and struct.unpack("<I", head[8:12])[0] == masked_crc32c(head[:8]):
        return "NONE"
    if len(head) >= 2 and head[0] & 0x0F == 8 and (head[0] * 256 + head[1]) % 31 == 0:
        return "ZLIB"
    if not head:
        return "NONE"  # an empty file holds no records, whatever its compression
    raise UserError(f"{path}: not a TFRecord file (neither uncompressed, ZLIB nor GZIP); "
                    f"check that the download is complete")


def read_tfrecords(path: str, compression: str = "auto") -> Iterator[bytes]:
    """The payloads of a TFRecord file, in order, each checked against both of its CRCs.

    Raises UserError naming the file and the record (counting from 0) when a record is truncated
    or corrupt.
    """
    if compression == "auto":
        compression = detect_compression(path)
    if compression not in COMPRESSIONS:
        raise UserError(f"{path}: unknown compression {compression!r}; expected one of {COMPRESSIONS}")
    index = 0
    with files.open_binary(path) as f:
        stream = _ByteStream(f, compression)
        try:
            while True:
                header = stream.read(12)
                if not header:
                    return
                if len(header) < 12:
                    raise _CorruptRecord("the file ends inside the record header (file truncated)")
                (length,) = struct.unpack("<Q", header[:8])
                (length_crc,) = struct.unpack("<I", header[8:])
                if masked_crc32c(header[:8]) != length_crc:
                    raise _CorruptRecord("the CRC of the record length does not match (corrupt data)")
                if length > _MAX_RECORD:
                    raise _CorruptRecord(f"impossible record length {length} (corrupt data)")
                payload = stream.read(length)
                footer = stream.read(4)
                if len(payload) < length or len(footer) < 4:
                    raise _CorruptRecord("the file ends inside the record (file truncated)")
                if masked_crc32c(payload) != struct.unpack("<I", footer)[0]:
                    raise _CorruptRecord("the CRC of the record data does not match (corrupt data)")
                yield payload
                index += 1
        except _CorruptRecord as e:
            raise UserError(f"{path}: record {index} (counting from 0): {e}; "
                            f"download this file again") from None


class TFRecordWriter:
    """Writes records with the standard framing; compression 'ZLIB' (Basenji's), 'GZIP' or 'NONE'."""

    def __init__(self, path: str, compression: str = "ZLIB", level: int = 6):
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}")
        self._file = open(path, "wb")
        wbits = {"ZLIB": 15, "GZIP": 31, "NONE": None}[compression]
        self._deflater = zlib.compressobj(level, zlib.DEFLATED, wbits) if wbits else None

    def _put(self, data: bytes) -> None:
        self._file.write(self._deflater.compress(data) if self._deflater else data)

    def write(self, payload: bytes) -> None:
        length = struct.pack("<Q", len(payload))
        self._put(length + struct.pack("<I", masked_crc32c(length)))
        self._put(payload)
        self._put(struct.pack("<I", masked_crc32c(payload)))

    def close(self) -> None:
        if self._deflater:
            self._file.write(self._deflater.flush())
        self._file.close()

    def __enter__(self) -> "TFRecordWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
                   crop_bp=int(raw.get("crop_bp", 0)), counts=counts)

    def to_json(self) -> dict:
        out = {"seq_length": self.seq_length, "pool_width": self.pool_width, "crop_bp": self.crop_bp,
               "target_length": self.target_length, "num_targets": self.num_targets}
        out.update({f"{split}_seqs": n for split, n in self.counts.items()})
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


def _parent(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[0] if files.is_url(path) else os.path.dirname(os.path.abspath(path))


class BasenjiRecords:
    """The records of one Basenji TFRecord file, or of one split of an organism folder.

    Yields {'sequence': uint8 one-hot [seq_length, 4], 'target': float16 [target_length, num_targets]}
    in file order, the files in numeric order, so record i of a split is row i of that split in
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
        seq_bytes = stats.seq_length * 4
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
                if len(value[0]) != size:
                    raise UserError(
                        f"{path}: record {index} (counting from 0): {key!r} has {len(value[0])} bytes, "
                        f"expected {size} from statistics.json (seq_length {stats.seq_length}, "
                        f"target_length {stats.target_length}, num_targets {stats.num_targets}); "
                        f"check that statistics.json belongs to these records")
                arrays[key] = value[0]
            yield {
                "sequence": np.frombuffer(arrays["sequence"], dtype=np.uint8).reshape(stats.seq_length, 4),
                "target": np.frombuffer(arrays["target"], dtype="<f2").reshape(stats.target_length,
                                                                                stats.num_targets),
            }


def write_records(path: str, samples, compression: str = "ZLIB") -> int:
    """Write {'sequence': one-hot [L, 4], 'target': float16 [T, N]} samples as a Basenji TFRecord file."""
    n = 0
    with TFRecordWriter(path, compression) as writer:
        for sample in samples:
            writer.write(encode_example({
                "sequence": np.ascontiguousarray(sample["sequence"], dtype=np.bool_).tobytes(),
                "target": np.ascontiguousarray(sample["target"], dtype="<f2").tobytes(),
            }))
            n += 1
    return n
