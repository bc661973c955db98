"""Shared helpers for the data tests: a tiny synthetic barnyard and its prepared stores, built once
per test session (import the fixtures into a test module to use them)."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest

from enformer_train.data.formats.crc32c import _TABLE_LIST
from enformer_train.data.producers.prepare import prepare
from enformer_train.demo.synthetic import BarnyardConfig, write_barnyard

TINY_SEQUENCE_LENGTH = 6144  # 4,096-bp records extended by 1,024 bp each side
_CACHE: dict = {}


def crc32c_reference(data: bytes) -> int:
    """Bit-for-bit CRC-32C, one byte at a time: the slow reference for the vectorised one."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE_LIST[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _root() -> str:
    if "root" not in _CACHE:
        _CACHE["root"] = tempfile.mkdtemp(prefix="enformer-data-tests-")
        atexit.register(shutil.rmtree, _CACHE["root"], ignore_errors=True)
    return _CACHE["root"]


def barnyard_dir() -> str:
    """A tiny barnyard: 320 regions per organism of 4,096 bp, 16 bins x 8 human / 6 mouse tracks,
    64 records a file (so train has 4 files)."""
    if "barnyard" not in _CACHE:
        out = os.path.join(_root(), "barnyard")
        write_barnyard(out, BarnyardConfig.tiny(records_per_file=64))
        _CACHE["barnyard"] = out
    return _CACHE["barnyard"]


def store_dir(organism: str = "human") -> str:
    """The barnyard's organism prepared with a 6,144-bp context and max shift 3."""
    key = f"store-{organism}"
    if key not in _CACHE:
        root = barnyard_dir()
        out = os.path.join(_root(), key)
        prepare(out, organism, os.path.join(root, f"{organism}.fa"), os.path.join(root, organism),
                sequence_length=TINY_SEQUENCE_LENGTH, max_shift=3, workers=0, records_per_file=64, progress=False)
        _CACHE[key] = out
    return _CACHE[key]


@pytest.fixture
def barnyard_copy(tmp_path):
    """A private copy of the tiny barnyard, for tests that damage it."""
    out = tmp_path / "barnyard"
    shutil.copytree(barnyard_dir(), out)
    return str(out)
