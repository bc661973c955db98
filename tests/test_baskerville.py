"""Records written by baskerville's hound tools: sequences as uint8 base indices (`"seq_1hot": true`),
other pool widths, sequences.bed rows holding the target span."""
import json
import os

import numpy as np
import pytest

from enformer_train.cli import main
from enformer_train.data.formats.basenji import BasenjiRecords, write_records
from enformer_train.data.formats.genome import Genome, decode
from enformer_train.data.producers.prepare import pool_targets, prepare
from enformer_train.data.store import Store
from enformer_train.errors import UserError

SEQ, CROP, POOL, TRACKS = 2048, 512, 32, 3
TARGET_LENGTH = (SEQ - 2 * CROP) // POOL  # 32 bins of 32 bp = the 1024-bp row


def _folder(tmp_path, pool_width=POOL, seq_1hot=True):
    """A baskerville-style organism folder over a random genome, and its FASTA."""
    rng = np.random.default_rng(0)
    genome = "".join(rng.choice(list("ACGT"), size=12_000))
    fasta = tmp_path / "g.fa"
    fasta.write_text(">chr1\n" + "\n".join(genome[i:i + 60] for i in range(0, len(genome), 60)) + "\n")
    folder = tmp_path / "basket"
    (folder / "tfrecords").mkdir(parents=True)
    starts = {"train": [600, 3000, 9000, 10_970], "valid": [5000, 7100]}  # 10,970 + 1024 + 512 runs off the end
    bed, targets = [], {}
    onehot = np.eye(5, 4, dtype=np.uint8)[Genome(str(fasta)).fetch("chr1", -10_000, 30_000)]
    for split, split_starts in starts.items():
        samples = []
        for start in split_starts:
            bed.append(f"chr1\t{start}\t{start + SEQ - 2 * CROP}\t{split}\n")
            sequence = onehot[start - CROP + 10_000:start + SEQ - CROP + 10_000]
            target = rng.gamma(1.0, 2.0, size=(TARGET_LENGTH, TRACKS)).astype(np.float16)
            samples.append({"sequence": sequence, "target": target})
        targets[split] = [s["target"] for s in samples]
        write_records(str(folder / "tfrecords" / f"{split}-0.tfr"), samples, seq_1hot=seq_1hot)
    (folder / "sequences.bed").write_text("".join(bed))
    stats = {"seq_length": SEQ, "pool_width": pool_width, "crop_bp": CROP, "target_length": TARGET_LENGTH,
             "num_targets": TRACKS, "train_seqs": 4, "valid_seqs": 2, "test_seqs": 0}
    if seq_1hot:
        stats["seq_1hot"] = True
    (folder / "statistics.json").write_text(json.dumps(stats))
    return str(fasta), str(folder), targets, genome


def test_base_index_records_read_as_one_hot_equal_to_the_genome(tmp_path):
    fasta, folder, targets, genome = _folder(tmp_path)
    with open(os.path.join(folder, "tfrecords", "train-0.tfr"), "rb") as f:
        assert len(f.read()) < 4 * SEQ * 4  # stored one byte a base
    records = list(BasenjiRecords(folder, "train"))
    assert records[0]["sequence"].shape == (SEQ, 4) and records[0]["sequence"].dtype == np.uint8
    codes = np.where(records[1]["sequence"].any(1), records[1]["sequence"].argmax(1), 4)
    assert decode(codes) == genome[3000 - CROP:3000 - CROP + SEQ]
    assert records[3]["sequence"][-100:].sum() == 0  # N past the chromosome end: the all-zero row
    np.testing.assert_array_equal(records[2]["target"], targets["train"][2])


def test_flag_and_byte_count_disagree_names_both(tmp_path):
    fasta, folder, _, _ = _folder(tmp_path)
    stats = json.load(open(os.path.join(folder, "statistics.json")))
    stats["seq_1hot"] = False
    json.dump(stats, open(os.path.join(folder, "statistics.json"), "w"))
    with pytest.raises(UserError, match=r"record 0 .*'sequence' has 2048 bytes \(one base index a byte\), but "
                                        r"statistics.json says seq_1hot false"):
        list(BasenjiRecords(folder, "train"))


def test_pool_targets_sums_adjacent_bins():
    target = np.arange(16, dtype=np.float16).reshape(8, 2)
    np.testing.assert_array_equal(pool_targets(target, 4), [[0 + 2 + 4 + 6, 1 + 3 + 5 + 7], [8 + 10 + 12 + 14, 9 + 11 + 13 + 15]])


def test_prepare_takes_a_baskerville_folder(tmp_path):
    fasta, folder, targets, genome = _folder(tmp_path)
    manifest = prepare(str(tmp_path / "store"), "human", fasta, folder, sequence_length=4096, max_shift=3,
                       splits=("train", "valid"), workers=0, progress=False)
    assert manifest["pool_width"] == 128 and manifest["source_pool_width"] == POOL
    assert manifest["target_length"] == TARGET_LENGTH // 4
    for split, split_targets in targets.items():
        store = Store(str(tmp_path / "store"), split)
        assert store.target_length == 8
        for i, target in enumerate(split_targets):
            np.testing.assert_allclose(store[i]["target"].astype(np.float32),
                                       target.astype(np.float32).reshape(8, 4, TRACKS).sum(1), rtol=1e-3)
    # the window is centred on the row (the target span): 4096 + 2 x 3 bp around its centre
    store = Store(str(tmp_path / "store"), "train")
    centre = 3000 + (SEQ - 2 * CROP) // 2
    assert decode(store[1]["sequence"]) == genome[centre - 2048 - 3:centre + 2048 + 3]
    assert store.regions()[1][1] == centre - 2048 - 3


def test_pool_width_not_dividing_128_is_refused_in_one_line(tmp_path, capsys):
    fasta, folder, _, _ = _folder(tmp_path, pool_width=48)
    assert main(["prepare", "--organism", "human", "--fasta", fasta, "--basenji", folder,
                 "--out", str(tmp_path / "store"), "--context", "4096"]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pool_width 48 does not divide 128" in err
    assert not os.path.exists(tmp_path / "store" / "manifest.json")
