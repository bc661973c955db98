"""TFRecord files: the framing (length, masked CRC-32C of the length, payload, masked CRC-32C of the
payload) in a stream that is uncompressed, ZLIB or GZIP. Records are opaque bytes here; basenji.py
decodes Basenji's tf.train.Example records.

Neither TensorFlow nor the `tfrecord` package is used, so this runs beside TensorFlow in one process,
checks both CRCs of every record (the `tfrecord` package checks none and reads no ZLIB), and
streams: a file is never held in memory whole.
"""
from __future__ import annotations

import struct
import zlib
from typing import IO, Iterator

from ...errors import UserError
from ... import files
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
    yield from _frames(path, compression, payloads=True)


def count_tfrecords(path: str, compression: str = "auto") -> int:
    """The number of records in a TFRecord file, from its framing (length CRCs checked; the
    payloads are read past, their CRCs left to whoever reads them)."""
    return sum(1 for _ in _frames(path, compression, payloads=False))


def _frames(path: str, compression: str, payloads: bool) -> Iterator[bytes | None]:
    """Each record of the file in order: its payload, checked against its CRC, or with `payloads`
    False None once read past. A truncated or corrupt record is a UserError naming it."""
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
                if payloads:
                    payload = stream.read(length)
                    footer = stream.read(4)
                    if len(payload) < length or len(footer) < 4:
                        raise _CorruptRecord("the file ends inside the record (file truncated)")
                    if masked_crc32c(payload) != struct.unpack("<I", footer)[0]:
                        raise _CorruptRecord("the CRC of the record data does not match (corrupt data)")
                    yield payload
                else:
                    left = length + 4
                    while left > 0:
                        piece = len(stream.read(min(left, _READ_CHUNK)))
                        if not piece:
                            raise _CorruptRecord("the file ends inside the record (file truncated)")
                        left -= piece
                    yield None
                index += 1
        except _CorruptRecord as e:
            raise UserError(f"{path}: record {index} (counting from 0): {e}; download this file again") from None


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
