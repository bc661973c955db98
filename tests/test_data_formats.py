"""Basenji TFRecords, the Example codec, FASTA access, sequences.bed and targets.txt: known answers
and every bad input's error."""
from __future__ import annotations

import gzip
import json
import os
import struct
import zlib

import numpy as np
import pytest

from conftest_data import crc32c_reference
from enformer_train.data.formats.basenji import BasenjiRecords, encode_example, onehot_to_codes, parse_example, write_records
from enformer_train.data.formats.crc32c import crc32c, masked_crc32c
from enformer_train.codes import one_hot
from enformer_train.data.formats.genome import Genome, decode, encode
from enformer_train.data.formats.intervals import by_split, read_bed
from enformer_train.data.formats.targets import read_targets, strand_pairs
from enformer_train.data.formats.tfrecord import TFRecordWriter, detect_compression, read_tfrecords
from enformer_train.errors import UserError


# --- CRC-32C ----------------------------------------------------------------------------------

def test_crc32c_known_answers():
    assert crc32c(b"123456789") == 0xE3069283
    # RFC 3720 (iSCSI) B.4 test vectors
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E
    assert crc32c(bytes(range(31, -1, -1))) == 0x113FDB5C
    assert masked_crc32c(b"") == 0xA282EAD8  # crc 0, rotated, plus the TFRecord constant


@pytest.mark.parametrize("n", [2047, 2048, 2049, 4096 + 7, 65_536, 100_003])
def test_crc32c_vectorised_equals_bytewise(n):
    data = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()
    assert crc32c(data) == crc32c_reference(data)
    cut = n // 3
    assert crc32c(data[cut:], crc32c(data[:cut])) == crc32c_reference(data)


# --- TFRecord framing, written here by hand -----------------------------------------------------

def _masked(data: bytes) -> int:
    crc = crc32c_reference(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _frame(payloads) -> bytes:
    out = b""
    for p in payloads:
        length = struct.pack("<Q", len(p))
        out += length + struct.pack("<I", _masked(length)) + p + struct.pack("<I", _masked(p))
    return out


PAYLOADS = [b"", b"a", bytes(range(256)) * 20, os.urandom(70_000)]


@pytest.mark.parametrize("compression", ["NONE", "ZLIB", "GZIP"])
def test_standard_framing_reads_back_exactly(tmp_path, compression):
    raw = _frame(PAYLOADS)
    data = {"NONE": raw, "ZLIB": zlib.compress(raw), "GZIP": gzip.compress(raw)}[compression]
    path = tmp_path / "x.tfr"
    path.write_bytes(data)
    assert detect_compression(str(path)) == compression
    assert list(read_tfrecords(str(path))) == PAYLOADS
    # and the writer produces the same framing
    out = tmp_path / "y.tfr"
    with TFRecordWriter(str(out), compression) as w:
        for p in PAYLOADS:
            w.write(p)
    decoded = {"NONE": lambda b: b, "ZLIB": zlib.decompress, "GZIP": gzip.decompress}[compression](out.read_bytes())
    assert decoded == raw


def test_corrupt_payload_names_file_and_record(tmp_path):
    raw = bytearray(_frame(PAYLOADS))
    offset = sum(16 + len(p) for p in PAYLOADS[:2]) + 12 + 100  # inside record 2's payload
    raw[offset] ^= 0x01
    path = tmp_path / "bad.tfr"
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=r"bad\.tfr: record 2 .*CRC of the record data"):
        list(read_tfrecords(str(path)))


def test_corrupt_length_names_record(tmp_path):
    raw = bytearray(_frame(PAYLOADS))
    raw[16 + len(PAYLOADS[0]) + 2] ^= 0x40  # record 1's length field
    path = tmp_path / "bad.tfr"
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=r"record 1 .*CRC of the record length"):
        list(read_tfrecords(str(path), "NONE"))


@pytest.mark.parametrize("compression", ["NONE", "ZLIB"])
def test_truncated_file_names_record(tmp_path, compression):
    raw = _frame(PAYLOADS)
    data = raw if compression == "NONE" else zlib.compress(raw)
    path = tmp_path / "short.tfr"
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(UserError, match=r"short\.tfr: record 3 .*truncated"):
        list(read_tfrecords(str(path), compression))


# --- tf.train.Example ----------------------------------------------------------------------------

def test_example_hand_encoded_protobuf():
    # Example{features{feature{key:"sequence" value{bytes_list{value:"\x01\x00"}}}
    #                  feature{key:"n" value{int64_list{value:[5]}}}}}
    seq_entry = b"\x0a\x08sequence" + b"\x12\x06" + b"\x0a\x04" + b"\x0a\x02\x01\x00"
    int_entry = b"\x0a\x01n" + b"\x12\x04" + b"\x1a\x02" + b"\x08\x05"
    features = b"\x0a" + bytes([len(seq_entry)]) + seq_entry + b"\x0a" + bytes([len(int_entry)]) + int_entry
    example = b"\x0a" + bytes([len(features)]) + features
    parsed = parse_example(example)
    assert [bytes(v) for v in parsed["sequence"]] == [b"\x01\x00"]
    assert parsed["n"] == "int64_list"
    assert encode_example({"sequence": b"\x01\x00"}) == b"\x0a" + bytes([len(seq_entry) + 2]) + b"\x0a" + bytes([len(seq_entry)]) + seq_entry


def test_example_round_trip_large_value():
    value = os.urandom(300_000)  # multi-byte length varints
    assert bytes(parse_example(encode_example({"target": value, "s": b"x"}))["target"][0]) == value


def _write_folder(tmp_path, num_files=12, per_file=2, seq_length=8, target_length=2, num_targets=3):
    folder = tmp_path / "human"
    (folder / "tfrecords").mkdir(parents=True)
    rng = np.random.default_rng(0)
    samples = []
    for f in range(num_files):
        chunk = []
        for _ in range(per_file):
            codes = rng.integers(0, 5, seq_length)
            target = np.full((target_length, num_targets), len(samples), dtype=np.float16)
            chunk.append({"sequence": one_hot(codes), "target": target})
            samples.append(chunk[-1])
        write_records(str(folder / "tfrecords" / f"train-{f}.tfr"), chunk)
    (folder / "statistics.json").write_text(json.dumps({
        "num_targets": num_targets, "seq_length": seq_length, "pool_width": 4, "crop_bp": 0,
        "target_length": target_length, "train_seqs": len(samples), "valid_seqs": 0, "test_seqs": 0}))
    return folder, samples


def test_basenji_folder_reads_files_in_numeric_order(tmp_path):
    folder, samples = _write_folder(tmp_path)
    records = BasenjiRecords(str(folder), "train")
    assert [os.path.basename(p) for p in records.files][:3] == ["train-0.tfr", "train-1.tfr", "train-2.tfr"]
    assert os.path.basename(records.files[10]) == "train-10.tfr"
    got = list(records)
    assert len(got) == len(records) == 24
    assert [int(r["target"][0, 0]) for r in got] == list(range(24))
    for r, s in zip(got, samples):
        assert r["sequence"].dtype == np.uint8 and r["sequence"].shape == (8, 4)
        assert r["target"].dtype == np.float16 and r["target"].shape == (2, 3)
        np.testing.assert_array_equal(r["sequence"], s["sequence"])
    # a single file finds statistics.json in the folder above
    single = list(BasenjiRecords(str(folder / "tfrecords" / "train-10.tfr")))
    assert [int(r["target"][0, 0]) for r in single] == [20, 21]


def test_basenji_shape_mismatch_and_missing_file(tmp_path):
    folder, _ = _write_folder(tmp_path, num_files=3)
    stats = json.loads((folder / "statistics.json").read_text())
    stats["num_targets"] = 4
    (folder / "statistics.json").write_text(json.dumps(stats))
    with pytest.raises(UserError, match=r"train-0\.tfr: record 0 .*'target' has 12 bytes, expected 16"):
        list(BasenjiRecords(str(folder), "train"))
    os.remove(folder / "tfrecords" / "train-1.tfr")
    with pytest.raises(UserError, match="missing train-1"):
        BasenjiRecords(str(folder), "train")
    with pytest.raises(UserError, match="needs a split"):
        BasenjiRecords(str(folder))


def test_tensorflow_interop_both_ways(tmp_path):
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(1)
    samples = [{"sequence": one_hot(rng.integers(0, 5, 64)),
                "target": rng.gamma(1.0, 3.0, (4, 5)).astype(np.float16)} for _ in range(5)]
    stats = {"num_targets": 5, "seq_length": 64, "pool_width": 16, "crop_bp": 0, "target_length": 4,
             "train_seqs": 5}
    (tmp_path / "statistics.json").write_text(json.dumps(stats))
    for compression in ("ZLIB", "GZIP", ""):
        path = str(tmp_path / f"tf-{compression or 'none'}.tfr")
        with tf.io.TFRecordWriter(path, options=tf.io.TFRecordOptions(compression_type=compression)) as w:
            for s in samples:
                feature = {k: tf.train.Feature(bytes_list=tf.train.BytesList(value=[v])) for k, v in (
                    ("sequence", s["sequence"].astype(bool).tobytes()), ("target", s["target"].tobytes()))}
                w.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
        got = list(BasenjiRecords(path))  # read in a process where TensorFlow is imported
        assert len(got) == 5
        for g, s in zip(got, samples):
            np.testing.assert_array_equal(g["sequence"], s["sequence"])
            np.testing.assert_array_equal(g["target"], s["target"])
    ours = str(tmp_path / "ours.tfr")
    write_records(ours, samples, "ZLIB")
    for raw, s in zip(tf.data.TFRecordDataset([ours], compression_type="ZLIB"), samples):
        parsed = tf.io.parse_single_example(raw, {"sequence": tf.io.FixedLenFeature([], tf.string),
                                                  "target": tf.io.FixedLenFeature([], tf.string)})
        seq = tf.reshape(tf.io.decode_raw(parsed["sequence"], tf.bool), (64, 4)).numpy()
        np.testing.assert_array_equal(seq.astype(np.uint8), s["sequence"])
        np.testing.assert_array_equal(tf.io.decode_raw(parsed["target"], tf.float16).numpy().reshape(4, 5), s["target"])


# --- genome -----------------------------------------------------------------------------------

def test_codes_and_one_hot_known_answers():
    np.testing.assert_array_equal(encode("ACGTNacgtnRy"), [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 4, 4])
    np.testing.assert_array_equal(one_hot(encode("ACGTN")),
                                  [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0]])
    assert decode(encode("GATTACAN")) == "GATTACAN"
    np.testing.assert_array_equal(onehot_to_codes(one_hot(encode("TTGCAN"))), encode("TTGCAN"))
    with pytest.raises(ValueError, match="position 1"):
        onehot_to_codes(np.array([[1, 0, 0, 0], [1, 1, 0, 0]], dtype=np.uint8))


def _fasta(tmp_path, text: str) -> str:
    path = tmp_path / "g.fa"
    path.write_text(text)
    return str(path)


def test_fasta_index_fetch_and_padding(tmp_path):
    path = _fasta(tmp_path, ">chrA desc\nACGTa\ncgtNN\nRT\n>chrB\nGGGG\nCC\n")
    genome = Genome(path)
    # samtools faidx format: name, length, offset of first base, bases a line, bytes a line
    assert open(path + ".fai").read() == "chrA\t12\t11\t5\t6\nchrB\t6\t32\t4\t5\n"
    assert genome.lengths == {"chrA": 12, "chrB": 6}
    assert decode(genome.fetch("chrA", 0, 12)) == "ACGTACGTNNNT"  # upper-cased, R -> N
    assert decode(genome.fetch("chrA", 3, 7)) == "TACG"  # across a line end
    assert decode(genome.fetch("chrB", -3, 2)) == "NNNGG"  # off the start: N
    assert decode(genome.fetch("chrB", 4, 9)) == "CCNNN"  # off the end: N
    assert decode(genome.fetch("chrB", 7, 9)) == "NN"
    # the written index is used the next time
    assert Genome(path).lengths == genome.lengths


def test_fasta_irregular_lines_name_the_line(tmp_path):
    path = _fasta(tmp_path, ">chrA\nACGTA\nCG\nACGTA\n")
    with pytest.raises(UserError, match=r"g\.fa, line 3: lines of sequence 'chrA' have different lengths"):
        Genome(path)
    with pytest.raises(UserError, match="no sequence named 'chrZ'"):
        Genome(_fasta(tmp_path, ">chrA\nAC\n")).fetch("chrZ", 0, 1)


# --- sequences.bed --------------------------------------------------------------------------------

@pytest.mark.parametrize("line, message", [
    ("chrZ\t0\t4\ttrain", r"line 2: chromosome 'chrZ' is not in the genome"),
    ("chrA\t8\t13\ttrain", r"line 2: end 13 is beyond the end of chrA \(12 bp"),
    ("chrA\t5\t5\ttrain", r"line 2: start 5 must be >= 0 and less than end 5"),
    ("chrA\t0\t4\ttraining", r"line 2: unknown split 'training'"),
    ("chrA\tzero\t4\ttrain", r"line 2: start and end must be integers"),
    ("chrA\t0\t4", r"line 2: expected 4 columns"),
])
def test_bed_errors_name_the_line(tmp_path, line, message):
    genome = Genome(_fasta(tmp_path, ">chrA\nACGTACGTACGT\n"))
    bed = tmp_path / "sequences.bed"
    bed.write_text(f"chrA\t0\t4\tvalid\n{line}\n")
    with pytest.raises(UserError, match=message):
        read_bed(str(bed), genome)


def test_bed_rows_per_split_in_file_order(tmp_path):
    bed = tmp_path / "sequences.bed"
    bed.write_text("chrA\t0\t4\ttrain\nchrA\t1\t5\tvalid\n\nchrA\t2\t6\ttrain\nchrA\t3\t7\ttest\n")
    rows = by_split(read_bed(str(bed)))
    assert [(r.start, r.line) for r in rows["train"]] == [(0, 1), (2, 4)]
    assert [r.start for r in rows["valid"]] == [1] and [r.start for r in rows["test"]] == [3]


# --- targets.txt ------------------------------------------------------------------------------------

HEADER = "index\tgenome\tidentifier\tfile\tclip\tscale\tsum_stat\tdescription\n"


def test_strand_pairs_from_identifiers(tmp_path):
    path = tmp_path / "targets.txt"
    ids = ["ENCFF1", "CNhs1+", "CNhs2+", "CNhs1-", "LONE+", "CNhs2-"]
    path.write_text(HEADER + "".join(f"{i}\t0\t{x}\tf\t32\t2\tsum\td\n" for i, x in enumerate(ids)))
    np.testing.assert_array_equal(strand_pairs(read_targets(str(path))), [0, 3, 5, 1, 4, 2])


def test_strand_pairs_from_column_and_errors(tmp_path):
    path = tmp_path / "targets.txt"
    path.write_text("\tidentifier\tstrand_pair\n0\ta\t2\n1\tb\t1\n2\tc\t0\n")
    np.testing.assert_array_equal(strand_pairs(read_targets(str(path))), [2, 1, 0])
    path.write_text("\tidentifier\tstrand_pair\n0\ta\t2\n1\tb\t1\n2\tc\t1\n")
    with pytest.raises(UserError, match="line 2: strand_pair is not mutual"):
        strand_pairs(read_targets(str(path)), str(path))
    path.write_text("\tidentifier\tstrand_pair\n0\ta\t2\n1\tb\n")
    with pytest.raises(UserError, match="line 3: 2 tab-separated fields, expected 3"):
        read_targets(str(path))


def test_targets_txt_line_numbers_count_blank_lines(tmp_path):
    """An error names the line an editor shows: blank lines before it are counted (they are skipped
    as rows). The same reader serves bigWig targets (read_tracks)."""
    from enformer_train.data.formats.coverage import read_tracks

    path = tmp_path / "targets.txt"
    path.write_text("\n\tidentifier\tfile\tsum_stat\tdescription\n\n0\ta\ta.bw\tsum\tA\n\n1\tb\n")
    rows_error = "targets.txt, line 6: 2 tab-separated fields, expected 5"
    with pytest.raises(UserError, match=rows_error):
        read_targets(str(path))
    with pytest.raises(UserError, match=rows_error):
        read_tracks(str(path))
    path.write_text("\n\tidentifier\tfile\tsum_stat\tdescription\n\n0\ta\ta.bw\tsum\tA\n\n1\tb\tb.bw\tmode\tB\n")
    assert [r["line"] for r in read_targets(str(path))] == ["4", "6"]
    with pytest.raises(UserError, match="targets.txt, line 6: unknown sum_stat 'mode'"):
        read_tracks(str(path))
    path.write_text("\n\nindex\tfile\n0\ta.bw\n")
    with pytest.raises(UserError, match="targets.txt, line 3: no 'identifier' column"):
        read_targets(str(path))
