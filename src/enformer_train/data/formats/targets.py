"""Basenji's targets.txt and the strand pairs that reverse complement swaps.

targets.txt is tab-separated with a header: index, genome, identifier, file, clip, scale, sum_stat,
description (the first column's name may be empty). A reverse complement turns the + strand into the
- strand, so a stranded track's values must move to its partner track. The rule, in order:

1. a `strand_pair` column, when present, gives each track's partner by its `index` (itself when
   unstranded); pairs must be mutual;
2. otherwise identifiers ending in '+' and '-' with the same stem pair up ('CNhs11760+' <->
   'CNhs11760-'); a '+' or '-' track without its partner stays in place;
3. every other track stays in place.

Enformer's released data (Basenji barnyard) has no stranded tracks, so there the rule is the identity
and a reverse complement only reverses the targets along positions, as in the reference colab.
"""
from __future__ import annotations

import numpy as np

from ...errors import UserError
from ... import files


BASENJI_COLUMNS = "index, genome, identifier, file, clip, scale, sum_stat, description"


def read_targets(path: str, required: tuple[str, ...] = ("identifier",),
                 expected: str = BASENJI_COLUMNS) -> list[dict[str, str]]:
    """Rows of targets.txt as dicts keyed by the header's column names ('index' for an empty first
    name), each with 'line': its line number in the file (blank lines are skipped but counted, so
    an error names the line an editor shows). A header without one of `required` is an error naming
    it and the `expected` columns."""
    numbered = [(n, line) for n, line in enumerate(files.read_text(path).splitlines(), start=1) if line.strip()]
    if not numbered:
        raise UserError(f"{path}: empty; expected Basenji's targets.txt: a tab-separated header ({expected}) "
                        f"and one line per track")
    header_line, header = numbered[0][0], numbered[0][1].split("\t")
    if header[0] == "":
        header[0] = "index"
    missing = [c for c in required if c not in header]
    if missing:
        raise UserError(f"{path}, line {header_line}: no {missing[0]!r} column; expected Basenji's targets.txt "
                        f"header ({expected})")
    rows = []
    for number, line in numbered[1:]:
        fields = line.split("\t")
        if len(fields) != len(header):
            raise UserError(f"{path}, line {number}: {len(fields)} tab-separated fields, expected {len(header)} "
                            f"as in the header")
        rows.append(dict(zip(header, fields), line=str(number)))
    return rows


def strand_pairs(rows: list[dict[str, str]], path: str = "targets.txt") -> np.ndarray:
    """[num_targets] int64 permutation p: after a reverse complement, track t takes the values of p[t]."""
    n = len(rows)
    perm = np.arange(n, dtype=np.int64)
    if rows and "strand_pair" in rows[0]:
        position = {}
        for i, row in enumerate(rows):
            position[row.get("index", str(i)).strip()] = i
        for i, row in enumerate(rows):
            key = row["strand_pair"].strip()
            if key not in position:
                raise UserError(f"{path}, line {row['line']}: strand_pair {key!r} is not the index of a track")
            perm[i] = position[key]
        bad = np.nonzero(perm[perm] != np.arange(n))[0]
        if bad.size:
            row = rows[int(bad[0])]
            raise UserError(f"{path}, line {row['line']}: strand_pair is not mutual (track {row.get('index')} "
                            f"points to {row['strand_pair']}, which points elsewhere)")
        return perm
    by_identifier = {row["identifier"]: i for i, row in enumerate(rows)}
    for i, row in enumerate(rows):
        identifier = row["identifier"]
        if identifier.endswith("+"):
            partner = by_identifier.get(identifier[:-1] + "-")
            if partner is not None:
                perm[i], perm[partner] = partner, i
    return perm


def read_strand_pairs(path: str) -> np.ndarray:
    return strand_pairs(read_targets(path), path)
