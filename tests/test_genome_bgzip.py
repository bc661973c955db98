"""Bgzipped FASTA (hg38.fa.gz with .fai/.gzi): read as given, equal to the plain FASTA everywhere,
including across BGZF block boundaries; plain gzip refused with the bgzip command."""
import gzip
import os

import numpy as np
import pytest

from enformer_train.cli import main
from enformer_train.data.formats.genome import Genome, decode
from enformer_train.errors import UserError

pysam = pytest.importorskip("pysam")


def _genome_text(rng) -> str:
    parts = []
    for name, length, width in (("chr1", 150_000, 60), ("chr2", 70_001, 50), ("chrM", 17, 60)):
        bases = rng.choice(list("ACGTNacgt"), size=length)
        lines = ["".join(bases[i:i + width]) for i in range(0, length, width)]
        parts.append(f">{name} description\n" + "\n".join(lines) + "\n")
    return "".join(parts)


def _write(tmp_path, rng):
    text = _genome_text(rng)
    plain = tmp_path / "g.fa"
    plain.write_text(text)
    packed = tmp_path / "g.fa.gz"
    pysam.tabix_compress(str(plain), str(packed))  # what `bgzip` writes: BGZF blocks of 65,280 bytes
    return str(plain), str(packed), text


def _block_boundaries(text: str, gzi: str):
    """(chrom, base position) of the first base after each BGZF block boundary, from the .gzi (htslib's
    format: a count, then (compressed, uncompressed) offsets of every block but the first, little-endian)."""
    table = np.fromfile(gzi, dtype="<u8")
    offsets = set(table[2::2].tolist())
    assert len(offsets) == table[0]
    positions, chrom, base = [], None, 0
    for offset, char in enumerate(text):
        if char == ">":
            chrom, base, header = text[offset + 1:text.index(" ", offset)], 0, True
        if offset in offsets and chrom and not header:
            positions.append((chrom, base))
        if char == "\n":
            header = False
        elif not header:
            base += 1
    return positions


def test_bgzipped_fasta_equals_plain_fasta_over_random_ranges_and_block_boundaries(tmp_path, capsys):
    rng = np.random.default_rng(0)
    plain_path, packed_path, text = _write(tmp_path, rng)
    plain = Genome(plain_path)
    packed = Genome(packed_path)
    assert "indexing" in capsys.readouterr().err  # built .fai and .gzi, with a line saying so
    assert os.path.exists(packed_path + ".fai") and os.path.exists(packed_path + ".gzi")
    assert packed.lengths == plain.lengths == {"chr1": 150_000, "chr2": 70_001, "chrM": 17}
    boundaries = _block_boundaries(text, packed_path + ".gzi")
    assert len(boundaries) >= 3
    ranges = []
    for chrom, pos in boundaries:
        for a in (-61, -1, 0, 1):
            for b in (0, 1, 2, 130):
                ranges.append((chrom, pos + a, pos + b + 1))
    for _ in range(300):
        chrom = rng.choice(list(plain.lengths))
        start = int(rng.integers(-200, plain.lengths[chrom] + 10))
        ranges.append((chrom, start, start + int(rng.integers(0, 70_000))))
    for chrom, start, end in ranges:
        np.testing.assert_array_equal(packed.fetch(chrom, start, end), plain.fetch(chrom, start, end),
                                      err_msg=f"{chrom}:{start}-{end}")
    assert decode(packed.fetch("chrM", -2, 20))[:2] == "NN" and decode(packed.fetch("chrM", -2, 20))[-3:] == "NNN"
    # opened again: the written index is used, silently; in a forked worker too (a pickled Genome)
    again = Genome(packed_path)
    assert capsys.readouterr().err == ""
    import pickle
    clone = pickle.loads(pickle.dumps(again))
    np.testing.assert_array_equal(clone.fetch("chr2", 100, 9000), plain.fetch("chr2", 100, 9000))


def test_bgzipped_fasta_with_the_plain_fastas_fai_reads_right(tmp_path):
    # the case seen with a real hg38 slice: a valid .fai beside the .fa.gz gave N where bases are
    rng = np.random.default_rng(1)
    plain_path, packed_path, _ = _write(tmp_path, rng)
    Genome(plain_path)
    os.replace(plain_path + ".fai", packed_path + ".fai")
    os.utime(packed_path + ".fai")
    packed, plain = Genome(packed_path), Genome(plain_path)
    for start in range(0, 150_000, 6144):
        np.testing.assert_array_equal(packed.fetch("chr1", start, start + 6144), plain.fetch("chr1", start, start + 6144))


def test_plain_gzip_fasta_is_refused_with_the_bgzip_command(tmp_path, capsys):
    path = tmp_path / "g.fa.gz"
    with gzip.open(path, "wt") as f:
        f.write(">chr1\nACGT\n")
    with pytest.raises(UserError, match=r"gzip-compressed.*`gunzip .*g\.fa\.gz && bgzip .*g\.fa`"):
        Genome(str(path))
    # on the command line: one line, no traceback
    assert main(["regions", "--fasta", str(path), "--length", "4"]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bgzip" in err


def test_regions_command_takes_a_bgzipped_fasta(tmp_path, capsys):
    rng = np.random.default_rng(2)
    plain_path, packed_path, _ = _write(tmp_path, rng)
    assert main(["regions", "--fasta", plain_path, "--length", "20000", "--max-n", "1"]) == 0
    from_plain = capsys.readouterr().out
    assert main(["regions", "--fasta", packed_path, "--length", "20000", "--max-n", "1"]) == 0
    assert capsys.readouterr().out == from_plain != ""
