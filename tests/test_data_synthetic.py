"""The synthetic barnyard: Basenji's formats exactly, and targets that follow the sequence."""
from __future__ import annotations

import json
import os
import re

import numpy as np

from conftest_data import barnyard_dir
from enformer_train.data.formats.basenji import BasenjiRecords, Statistics, onehot_to_codes
from enformer_train.data.formats.tfrecord import read_tfrecords
from enformer_train.data.formats.genome import build_fai, decode
from enformer_train.demo.synthetic import MOTIF_LENGTH, BarnyardConfig, _Organism, motifs
from enformer_train.data.formats.targets import read_strand_pairs


def test_files_in_upstream_formats():
    root = barnyard_dir()
    for organism, tracks in (("human", 8), ("mouse", 6)):
        folder = os.path.join(root, organism)
        stats = json.load(open(os.path.join(folder, "statistics.json")))
        assert stats == {"num_targets": tracks, "seq_length": 4096, "pool_width": 128, "crop_bp": 1024,
                         "target_length": 16, "train_seqs": 256, "valid_seqs": 32, "test_seqs": 32}
        names = sorted(os.listdir(os.path.join(folder, "tfrecords")))
        assert names == ["test-0.tfr", "train-0.tfr", "train-1.tfr", "train-2.tfr", "train-3.tfr", "valid-0.tfr"]
        head = open(os.path.join(folder, "tfrecords", "train-0.tfr"), "rb").read(2)
        assert head[0] == 0x78 and (head[0] * 256 + head[1]) % 31 == 0  # a zlib stream
        assert sum(1 for _ in read_tfrecords(os.path.join(folder, "tfrecords", "train-1.tfr"))) == 64
        bed = [line.split("\t") for line in open(os.path.join(folder, "sequences.bed")).read().splitlines()]
        assert len(bed) == 320 and {b[3] for b in bed} == {"train", "valid", "test"}
        assert all(int(b[2]) - int(b[1]) == 4096 for b in bed)
        assert open(os.path.join(folder, "targets.txt")).readline() == \
            "index\tgenome\tidentifier\tfile\tclip\tscale\tsum_stat\tdescription\n"
        fasta = os.path.join(root, f"{organism}.fa")
        fai = open(fasta + ".fai").read()
        assert fai == "".join(f"{n}\t{e.length}\t{e.offset}\t{e.line_bases}\t{e.line_width}\n"
                              for n, e in build_fai(fasta))
    pairs = read_strand_pairs(os.path.join(root, "human", "targets.txt"))
    np.testing.assert_array_equal(pairs, [0, 2, 1, 3, 4, 5, 7, 6])


def _motif_counts(codes: np.ndarray, motif: str, crop: int, bins: int, width: int) -> np.ndarray:
    text = decode(codes)
    counts = np.zeros(bins)
    for hit in re.finditer(f"(?={motif})", text):
        b = int((hit.start() + MOTIF_LENGTH / 2 - crop) // width)
        if 0 <= b < bins:
            counts[b] += 1
    return counts


def test_targets_follow_motifs_and_strand():
    root = barnyard_dir()
    records = list(BasenjiRecords(os.path.join(root, "human"), "train"))
    promoters, _ = motifs()
    rc = str.maketrans("ACGT", "TGCA")
    # human track 1 is 'SYNH0001+' reading motif 1 on the + strand, track 2 its '-' partner
    plus, minus, track_plus, track_minus = [], [], [], []
    for r in records:
        codes = onehot_to_codes(r["sequence"])
        plus.append(_motif_counts(codes, promoters[1], 1024, 16, 128))
        minus.append(_motif_counts(codes, promoters[1][::-1].translate(rc), 1024, 16, 128))
        track_plus.append(r["target"][:, 1].astype(np.float64))
        track_minus.append(r["target"][:, 2].astype(np.float64))
    plus, minus = np.concatenate(plus), np.concatenate(minus)
    track_plus, track_minus = np.concatenate(track_plus), np.concatenate(track_minus)
    assert np.corrcoef(plus, track_plus)[0, 1] > 0.6
    assert np.corrcoef(minus, track_minus)[0, 1] > 0.6
    assert abs(np.corrcoef(minus, track_plus)[0, 1]) < 0.15  # stranded: the other strand does nothing
    assert track_plus[plus == 0].mean() < 3 and track_plus[plus > 0].mean() > 8


def test_enhancers_act_at_long_range():
    config = BarnyardConfig.demo(genome_size=400_000, num_regions=10)
    organism = _Organism("human", config, seed=0)
    enhancers = organism.enhancers["chr1"]
    centres = np.array([enhancers[0] + 700.0, enhancers[0] + 10.0])
    assert config.enhancer_range == 768 <= config.crop_bp  # inside the input's flanks: a model sees it
    gain = organism._gain("chr1", centres)
    assert gain[0] == gain[1] == 3.0  # an enhancer 700 bp (5.5 bins) away boosts a promoter 3x
    assert organism._gain("chr1", np.array([enhancers[-1] + 769.0]))[0] == 1.0  # out of range
    stats = Statistics.read(os.path.join(barnyard_dir(), "mouse", "statistics.json"))
    assert stats.counts == {"train": 256, "valid": 32, "test": 32}
