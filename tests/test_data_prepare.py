"""prepare: records + FASTA + BED -> store; pairing checks, errors, resume, and the store it writes."""
from __future__ import annotations

import glob
import json
import os
import shutil

import numpy as np
import pytest

from conftest_data import TINY_SEQUENCE_LENGTH, barnyard_copy, barnyard_dir, store_dir  # noqa: F401 (fixture)
from enformer_train.cli import main as cli_main
from enformer_train.data.formats.basenji import BasenjiRecords, onehot_to_codes, write_records
from enformer_train.data.formats.genome import Genome
from enformer_train.data.formats.intervals import by_split, read_bed
from enformer_train.data.producers.prepare import prepare
from enformer_train.data.store import Store
from enformer_train.errors import UserError

MARGIN = (TINY_SEQUENCE_LENGTH - 4096) // 2 + 3  # bases of the window before the BED region


def _prepare(root, out, **kw):
    args = dict(sequence_length=TINY_SEQUENCE_LENGTH, max_shift=3, workers=0, records_per_file=64, progress=False)
    args.update(kw)
    return prepare(str(out), "human", os.path.join(root, "human.fa"), os.path.join(root, "human"), **args)


def test_store_holds_fasta_windows_and_record_targets():
    root = barnyard_dir()
    genome = Genome(os.path.join(root, "human.fa"))
    rows = by_split(read_bed(os.path.join(root, "human", "sequences.bed"), genome))
    for split in ("train", "valid", "test"):
        store = Store(store_dir("human"), split)
        records = list(BasenjiRecords(os.path.join(root, "human"), split))
        assert len(store) == len(records) == len(rows[split])
        assert store.window == TINY_SEQUENCE_LENGTH + 6
        for i in range(len(store)):
            sample, region = store[i], rows[split][i]
            assert sample["sequence"].dtype == np.uint8 and sample["target"].dtype == np.float16
            np.testing.assert_array_equal(sample["target"], records[i]["target"])
            np.testing.assert_array_equal(sample["sequence"],
                                          genome.fetch(region.chrom, region.start - MARGIN, region.end + MARGIN))
            # the middle of the window is the record's sequence (N in the record is N in the FASTA here)
            np.testing.assert_array_equal(sample["sequence"][MARGIN:MARGIN + 4096],
                                          onehot_to_codes(records[i]["sequence"]))
        assert [r[3] for r in store.regions()] == [r.line for r in rows[split]]


def test_windows_off_chromosome_ends_are_padded_with_n():
    root = barnyard_dir()
    bed = open(os.path.join(root, "human", "sequences.bed")).read().splitlines()
    chrom, start, end, split = bed[0].split("\t")  # the barnyard puts its first region at chr1:0
    assert (chrom, start) == ("chr1", "0")
    store = Store(store_dir("human"), split)
    i = [r[3] for r in store.regions()].index(1)
    window = store[i]["sequence"]
    assert (window[:MARGIN] == 4).all()  # beyond the chromosome start
    assert (window[MARGIN:MARGIN + 500] == 4).all()  # the barnyard's telomere gap (real N)
    assert (window[MARGIN + 500:] < 4).mean() > 0.99
    chrom, start, end, split = bed[1].split("\t")  # and its second at the end of chr2
    genome = Genome(os.path.join(root, "human.fa"))
    assert int(end) == genome.lengths[chrom]
    store = Store(store_dir("human"), split)
    window = store[[r[3] for r in store.regions()].index(2)]["sequence"]
    assert (window[-MARGIN:] == 4).all() and (window[:-MARGIN] < 4).all()


def test_manifest_and_cli(tmp_path, capsys):
    root = barnyard_dir()
    code = cli_main(["prepare", "--organism", "human", "--fasta", os.path.join(root, "human.fa"),
                     "--basenji", os.path.join(root, "human"), "--out", str(tmp_path / "s"),
                     "--context", str(TINY_SEQUENCE_LENGTH), "--workers", "2", "--records-per-file", "64",
                     "--splits", "valid,test", "--no-progress"])
    assert code == 0
    assert "human store complete (valid 32, test 32" in capsys.readouterr().out
    manifest = json.load(open(tmp_path / "s" / "manifest.json"))
    assert manifest["complete"] and manifest["format_version"] == 1
    assert (manifest["window"], manifest["target_length"], manifest["num_targets"]) == (TINY_SEQUENCE_LENGTH + 6, 16, 8)
    assert manifest["splits"]["valid"]["count"] == 32 and "train" not in manifest["splits"]
    assert manifest["sources"]["basenji"]["files"]["valid-0.tfr"] == os.path.getsize(
        os.path.join(root, "human", "tfrecords", "valid-0.tfr"))
    # two workers wrote the same bytes as one process
    for split in ("valid", "test"):
        for suffix in ("sequence.u8", "target.f16"):
            assert open(tmp_path / "s" / f"{split}.{suffix}", "rb").read() == \
                open(os.path.join(store_dir("human"), f"{split}.{suffix}"), "rb").read()
    with pytest.raises(UserError, match="no split 'train'"):
        Store(str(tmp_path / "s"), "train")
    # a user mistake is one line on stderr and exit code 1
    code = cli_main(["prepare", "--organism", "human", "--fasta", os.path.join(root, "mouse.fa"),
                     "--basenji", os.path.join(root, "human"), "--out", str(tmp_path / "t"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and err.startswith("enformer-train prepare: error: ")


def _interleave(folder):
    """Rewrite train files as a parallel reader would have: records of two files alternating."""
    records = list(BasenjiRecords(folder, "train"))
    order = [i for pair in zip(range(0, 64), range(64, 128)) for i in pair] + list(range(128, len(records)))
    shuffled = [records[i] for i in order]
    for f in range(4):
        write_records(os.path.join(folder, "tfrecords", f"train-{f}.tfr"), shuffled[f * 64:(f + 1) * 64])


def test_interleaved_records_stop_with_the_first_rows(barnyard_copy, tmp_path):
    _interleave(os.path.join(barnyard_copy, "human"))
    with pytest.raises(UserError) as e:
        _prepare(barnyard_copy, tmp_path / "s")
    message = str(e.value)
    assert "train rows of 64 read so far do not match their records" in message
    first_train = [n for n, line in enumerate(open(os.path.join(barnyard_copy, "human", "sequences.bed")), 1)
                   if line.rstrip().endswith("train")]
    assert f"first: line {first_train[1]} " in message  # row 0 is in place, row 1 is not
    assert "interleaved" in message
    with pytest.raises(UserError, match="store is incomplete"):
        Store(str(tmp_path / "s"), "valid")  # a failed prepare leaves nothing Store opens


def _resplit(folder: str, split: str, sizes: list[int]) -> list:
    """Write the split's records again in files of `sizes` records (as basenji_data.py --seqs_per_tfr)."""
    records = list(BasenjiRecords(folder, split))
    for path in glob.glob(os.path.join(folder, "tfrecords", f"{split}-*.tfr")):
        os.remove(path)
    first = 0
    for number, size in enumerate(sizes):
        write_records(os.path.join(folder, "tfrecords", f"{split}-{number}.tfr"), records[first:first + size])
        first += size
    assert first == len(records)
    return records


def test_files_of_any_record_counts_give_the_same_store(barnyard_copy, tmp_path):
    folder = os.path.join(barnyard_copy, "human")
    _resplit(folder, "train", [10, 100, 0, 50, 96])
    _resplit(folder, "valid", [32])
    _resplit(folder, "test", [5, 27])
    for workers in (0, 2):
        manifest = prepare(str(tmp_path / f"s{workers}"), "human", os.path.join(barnyard_copy, "human.fa"), folder,
                           sequence_length=TINY_SEQUENCE_LENGTH, max_shift=3, workers=workers, progress=False)
        assert manifest["prepare"]["files_converted"] == 7  # the empty file has nothing to convert
        for split in ("train", "valid", "test"):
            for suffix in ("sequence.u8", "target.f16", "regions.bed"):
                assert open(tmp_path / f"s{workers}" / f"{split}.{suffix}", "rb").read() == \
                    open(os.path.join(store_dir("human"), f"{split}.{suffix}"), "rb").read(), (split, suffix)


def test_records_out_of_bed_order_in_resplit_files_are_refused(barnyard_copy, tmp_path):
    folder = os.path.join(barnyard_copy, "human")
    records = _resplit(folder, "valid", [7, 25])
    records[6], records[7] = records[7], records[6]  # across the files' boundary
    write_records(os.path.join(folder, "tfrecords", "valid-0.tfr"), records[:7])
    write_records(os.path.join(folder, "tfrecords", "valid-1.tfr"), records[7:])
    with pytest.raises(UserError, match=r"1 valid rows of 7 read so far do not match their records.* first: line \d+ "):
        _prepare(barnyard_copy, tmp_path / "s", splits=("valid",), records_per_file=None)


def test_mismatch_rate_tolerated_below_threshold(barnyard_copy, tmp_path):
    folder = os.path.join(barnyard_copy, "human")
    records = list(BasenjiRecords(folder, "valid"))
    seq = records[5]["sequence"].copy()
    seq[2000] = np.roll(seq[2000], 1) if seq[2000].any() else [1, 0, 0, 0]
    records[5] = {"sequence": seq, "target": records[5]["target"]}
    write_records(os.path.join(folder, "tfrecords", "valid-0.tfr"), records)
    with pytest.raises(UserError, match=r"1 valid rows of 32 .* \(at most 0 allowed\)"):
        _prepare(barnyard_copy, tmp_path / "a", splits=("valid",))
    manifest = _prepare(barnyard_copy, tmp_path / "b", splits=("valid",), max_mismatch_rate=0.05)
    assert manifest["splits"]["valid"]["mismatched_rows"] == 1


def test_corrupt_file_then_resume_gives_the_same_store(barnyard_copy, tmp_path):
    path = os.path.join(barnyard_copy, "human", "tfrecords", "train-2.tfr")
    good = open(path, "rb").read()
    # A payload byte flipped (an uncompressed file, so that only the record's CRC can tell): the
    # records are counted from their framing, and the conversion stops at the bad record.
    write_records(path, list(BasenjiRecords(path, statistics=os.path.join(barnyard_copy, "human", "statistics.json"))),
                  compression="NONE")
    bad = bytearray(open(path, "rb").read())
    bad[12 + 100] ^= 0xFF  # record 0's payload
    open(path, "wb").write(bytes(bad))
    with pytest.raises(UserError, match=r"train-2\.tfr: record 0 .*CRC of the record data"):
        _prepare(barnyard_copy, tmp_path / "s")
    with pytest.raises(UserError, match="incomplete.*run the same `enformer-train prepare` command again"):
        Store(str(tmp_path / "s"), "train")
    open(path, "wb").write(good)
    manifest = _prepare(barnyard_copy, tmp_path / "s")
    assert manifest["prepare"]["files_from_earlier_runs"] == 2  # train-0 and train-1 were done
    assert manifest["prepare"]["files_converted"] == 4  # train-2, train-3, valid-0, test-0
    for split in ("train", "valid", "test"):
        for suffix in ("sequence.u8", "target.f16", "regions.bed"):
            assert open(tmp_path / "s" / f"{split}.{suffix}", "rb").read() == \
                open(os.path.join(store_dir("human"), f"{split}.{suffix}"), "rb").read()
    assert not os.path.exists(tmp_path / "s" / "prepare-state.json")
    # a second run has nothing to do
    assert _prepare(barnyard_copy, tmp_path / "s")["prepare"]["files_converted"] == 4


def test_other_options_restart_clean(barnyard_copy, tmp_path):
    path = os.path.join(barnyard_copy, "human", "tfrecords", "valid-0.tfr")
    good = open(path, "rb").read()
    open(path, "wb").write(good[:-10])
    with pytest.raises(UserError):
        _prepare(barnyard_copy, tmp_path / "s")
    open(path, "wb").write(good)
    manifest = _prepare(barnyard_copy, tmp_path / "s", sequence_length=4096, max_shift=2)
    assert manifest["prepare"]["files_from_earlier_runs"] == 0 and manifest["window"] == 4100
    assert os.path.getsize(tmp_path / "s" / "train.sequence.u8") == 256 * 4100
    with pytest.raises(UserError, match="holds a store made from other inputs or options"):
        _prepare(barnyard_copy, tmp_path / "s")


def test_bad_inputs(barnyard_copy, tmp_path):
    folder = os.path.join(barnyard_copy, "human")
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"x")
    with pytest.raises(UserError, match="exists and holds other files"):
        _prepare(barnyard_copy, foreign)
    with pytest.raises(UserError, match=r"train-0\.tfr: 64 records, expected 128 \(--records-per-file\)"):
        _prepare(barnyard_copy, tmp_path / "a", records_per_file=128)
    os.rename(os.path.join(folder, "tfrecords", "test-0.tfr"), os.path.join(folder, "tfrecords", "test-1.tfr"))
    write_records(os.path.join(folder, "tfrecords", "test-0.tfr"), [])
    write_records(os.path.join(folder, "tfrecords", "test-2.tfr"),
                  list(BasenjiRecords(os.path.join(folder, "tfrecords", "valid-0.tfr")))[:3])
    with pytest.raises(UserError, match=r"the 3 test files hold 35 records \(test-0\.tfr 0, test-1\.tfr 32, "
                                        r"test-2\.tfr 3\), but .*sequences\.bed has 32 test rows"):
        _prepare(barnyard_copy, tmp_path / "a")
    os.remove(os.path.join(folder, "tfrecords", "test-2.tfr"))
    with pytest.raises(UserError, match=r"odd number"):
        _prepare(barnyard_copy, tmp_path / "a", sequence_length=4097)
    bed = os.path.join(folder, "sequences.bed")
    lines = open(bed).read().splitlines()
    open(bed, "w").write("\n".join(lines[:-1]) + "\n")
    with pytest.raises(UserError, match=r"sequences\.bed: \d+ \w+ rows, but .*statistics\.json says"):
        _prepare(barnyard_copy, tmp_path / "b")
    open(bed, "w").write("\n".join(lines + ["chrX\t0\t4096\ttrain"]) + "\n")
    with pytest.raises(UserError, match=rf"line {len(lines) + 1}: chromosome 'chrX' is not in the genome"):
        _prepare(barnyard_copy, tmp_path / "c")
    for p in (tmp_path / "a", tmp_path / "b", tmp_path / "c"):
        assert not os.path.exists(p / "manifest.json")


def test_basenji_folder_as_fsspec_url(tmp_path):
    pytest.importorskip("fsspec")
    root = barnyard_dir()
    manifest = prepare(str(tmp_path / "s"), "human", os.path.join(root, "human.fa"),
                       "file://" + os.path.join(root, "human"), sequence_length=TINY_SEQUENCE_LENGTH, workers=2,
                       records_per_file=64, splits=("valid",), progress=False)
    assert manifest["splits"]["valid"]["count"] == 32
    assert open(tmp_path / "s" / "valid.target.f16", "rb").read() == \
        open(os.path.join(store_dir("human"), "valid.target.f16"), "rb").read()


def test_store_refuses_missing_and_damaged(tmp_path):
    with pytest.raises(UserError, match="not a training store"):
        Store(str(tmp_path), "train")
    shutil.copytree(store_dir("human"), tmp_path / "s")
    with open(tmp_path / "s" / "valid.target.f16", "r+b") as f:
        f.truncate(100)
    with pytest.raises(UserError, match=r"valid\.target\.f16: 100 bytes, expected 8192"):
        Store(str(tmp_path / "s"), "valid")


def test_store_writer_for_another_producer(tmp_path):
    """A producer other than prepare: regions in, samples written out of order, resume, manifest."""
    from enformer_train.data.formats.intervals import Region
    from enformer_train.data.store import StoreWriter

    regions = {"valid": [Region("chr1", 100, 116, "valid", 1), Region("chr2", 0, 16, "valid", 2)]}
    kw = dict(sequence_length=8, max_shift=1, target_length=2, num_targets=3, inputs={"source": "x"}, sources={"x": 1})
    writer = StoreWriter(str(tmp_path / "s"), "human", regions, **kw)
    assert not writer.complete and writer.done("valid") == {}
    assert writer.window_of("valid", 0) == ("chr1", 103, 113)  # 16-bp region, 8 bp centred, 1 each side
    target = np.arange(6, dtype=np.float32).reshape(2, 3)
    writer.write("valid", 1, np.full(10, 2, np.uint8), target + 1)
    writer.sync("valid")
    writer.mark_done("valid", "b", {"n": 1})
    writer.close()
    with pytest.raises(UserError, match="store is incomplete"):
        Store(str(tmp_path / "s"), "valid")
    writer = StoreWriter(str(tmp_path / "s"), "human", regions, **kw)  # an interrupted run, resumed
    assert writer.done("valid") == {"b": {"n": 1}}
    writer.write("valid", 0, np.arange(10, dtype=np.uint8) % 5, target)
    writer.close()
    manifest = writer.finish(extra={"pool_width": 8})
    store = Store(str(tmp_path / "s"), "valid")
    assert manifest["pool_width"] == 8 and store.window == 10 and len(store) == 2
    np.testing.assert_array_equal(store[0]["sequence"], np.arange(10) % 5)
    np.testing.assert_array_equal(store[1]["target"], target + 1)
    assert store.regions() == [("chr1", 103, 113, 1), ("chr2", 3, 13, 2)]
    assert StoreWriter(str(tmp_path / "s"), "human", regions, **kw).complete
    with pytest.raises(UserError, match="other inputs or options.*--restart"):
        StoreWriter(str(tmp_path / "s"), "human", regions, **{**kw, "max_shift": 2})


def test_store_prepared_before_the_rename_still_reads(tmp_path, capsys):
    """Stores on users' disks call the input length "context" in their manifest and fingerprint, and
    have the --records-per-file of their day in it."""
    root = barnyard_dir()
    shutil.copytree(store_dir("human"), tmp_path / "s")
    path = tmp_path / "s" / "manifest.json"
    manifest = json.load(open(path))
    for d in (manifest, manifest["fingerprint"]):
        d["context"] = d.pop("sequence_length")
    manifest["fingerprint"]["records_per_file"] = 64  # prepare took --records-per-file then
    json.dump(manifest, open(path, "w"))
    store = Store(str(tmp_path / "s"), "valid")
    assert store.sequence_length == TINY_SEQUENCE_LENGTH and store.window == TINY_SEQUENCE_LENGTH + 6
    # the same prepare command finds it complete, as before the rename
    again = prepare(str(tmp_path / "s"), "human", os.path.join(root, "human.fa"), os.path.join(root, "human"),
                    sequence_length=TINY_SEQUENCE_LENGTH, max_shift=3, workers=0, records_per_file=64, progress=False)
    assert "already complete" in capsys.readouterr().out and again["sequence_length"] == TINY_SEQUENCE_LENGTH


def test_prepare_flag_sequence_length_is_an_alias_of_context():
    from enformer_train.cli import build_parser

    required = ["prepare", "--organism", "h", "--fasta", "f", "--basenji", "b", "--out", "o"]
    for flag in ("--context", "--sequence-length"):
        assert build_parser().parse_args(required + [flag, "4096"]).sequence_length == 4096
