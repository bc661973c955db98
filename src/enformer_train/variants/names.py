"""Chromosome names of a VCF or GTF against the FASTA's: `1` and `chr1` (and `MT` and `chrM`) are one
chromosome when exactly one of the spellings is in the FASTA."""
from __future__ import annotations

from collections.abc import Collection


def spellings(name: str) -> list[str]:
    """The other ways the same chromosome is written: with or without `chr`, `M`/`MT` for mitochondria."""
    bare = name[3:] if name.lower().startswith("chr") else name
    forms = [bare, "chr" + bare]
    if bare in ("M", "MT"):
        forms += ["MT", "chrM", "M", "chrMT"]
    return [f for f in dict.fromkeys(forms) if f != name]


def fasta_name(name: str, known: Collection[str]) -> str | None:
    """`name` as the FASTA (whose sequence names are `known`) writes it: itself when it is there, else
    the one other spelling that is; None when none is, or more than one is (ambiguous)."""
    if name in known:
        return name
    found = [f for f in spellings(name) if f in known]
    return found[0] if len(found) == 1 else None


class NameMap:
    """Maps a file's chromosome names to the FASTA's, remembering each name's answer and which were
    renamed (for the summary line)."""

    def __init__(self, known: Collection[str]):
        self.known = known
        self._seen: dict[str, str | None] = {}
        self.renamed: dict[str, str] = {}  # file's name -> FASTA's, only where they differ

    def __call__(self, name: str) -> str | None:
        if name not in self._seen:
            mapped = fasta_name(name, self.known)
            self._seen[name] = mapped
            if mapped is not None and mapped != name:
                self.renamed[name] = mapped
        return self._seen[name]

    def describe(self) -> str:
        """'1 -> chr1, 2 -> chr2, ...' (the first few), or '' when nothing was renamed."""
        pairs = [f"{a} -> {b}" for a, b in self.renamed.items()]
        return ", ".join(pairs[:4]) + (f" and {len(pairs) - 4} more" if len(pairs) > 4 else "")
