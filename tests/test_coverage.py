"""Coverage from bigWigs, step by step with known answers (hound_data_read.py's steps), targets.txt
and blacklist reading, the bigWig reader, tiling a genome into regions, and every bad input."""
from __future__ import annotations

import numpy as np
import pytest

pyBigWig = pytest.importorskip("pyBigWig")

from enformer_train.cli import main
from enformer_train.data.formats import coverage
from enformer_train.data.formats.coverage import (BigWig, Track, baseline, blacklist_in, check_chromosomes,
                                          coverage_targets, pool, read_blacklist, read_tracks, region_targets)
from enformer_train.data.formats.genome import Genome
from enformer_train.data.producers.regions import read_regions, tile
from enformer_train.errors import UserError


def write_bigwig(path, chroms: dict[str, int], values: dict[str, np.ndarray]) -> str:
    """A bigWig with one entry per run of equal values; NaN = no data there."""
    bw = pyBigWig.open(str(path), "w")
    bw.addHeader(list(chroms.items()))
    for chrom, v in values.items():
        v = np.asarray(v, dtype=np.float64)
        edges = np.flatnonzero(np.diff(v) != 0) + 1
        starts = np.concatenate([[0], edges])
        ends = np.concatenate([edges, [v.size]])
        keep = ~np.isnan(v[starts])
        bw.addEntries([chrom] * int(keep.sum()), starts[keep].tolist(), ends=ends[keep].tolist(),
                      values=v[starts[keep]].tolist())
    bw.close()
    return str(path)


def write_fasta(path, sequences: dict[str, str]) -> str:
    with open(path, "w") as f:
        for name, seq in sequences.items():
            f.write(f">{name}\n" + "".join(seq[i:i + 50] + "\n" for i in range(0, len(seq), 50)))
    return str(path)


def track(sum_stat="sum", clip=None, clip_soft=None, scale=1.0) -> Track:
    return Track("t", "t.bw", sum_stat, "test", clip=clip, clip_soft=clip_soft, scale=scale)


# --- steps 1-6 on arrays ----------------------------------------------------------------------------

def test_baseline_is_the_median_zero_with_a_nan_or_under_8_bins():
    c = np.arange(32, dtype=np.float32)  # 8 bins of 4
    assert baseline(c, pool_width=4) == 15.5
    c[3] = np.nan
    assert baseline(c, pool_width=4) == 0.0  # percentile of a span with NaN is NaN -> 0
    assert baseline(np.full(28, 5.0, np.float32), pool_width=4) == 0.0  # 7 bins


def test_median_is_numpys_percentile_to_the_bit():
    rng = np.random.default_rng(1)
    for n in (1024, 1025, 114_688):
        runs = np.repeat(rng.gamma(0.5, 4.0, n // 16 + 1), 16)[:n]  # coverage-like: runs of equal values
        steps = np.repeat(rng.integers(0, 3, n // 64 + 1) / 7, 64)[:n]  # few distinct values, many ties
        for values in (rng.gamma(0.5, 4.0, n), rng.integers(0, 4, n) / 3, rng.normal(size=n) * 1e3, runs, steps):
            c = values.astype(np.float32)
            assert coverage.median(c) == np.percentile(c, 50) and coverage.median(c).dtype == np.float32


def test_blacklist_is_widened_20_bp_and_clipped_to_the_baseline(tmp_path):
    bed = tmp_path / "black.bed"
    bed.write_text("chr1\t100\t110\nchr1\t10\t12\n")
    black = read_blacklist(str(bed))
    np.testing.assert_array_equal(black["chr1"], [[0, 32], [80, 130]])  # sorted, start not below 0
    np.testing.assert_array_equal(blacklist_in(black, "chr1", 64, 64 + 32), [[16, 32]])  # cut to the span
    np.testing.assert_array_equal(blacklist_in(black, "chr1", 120, 184), [[0, 10]])  # starts before the span
    assert blacklist_in(black, "chr2", 0, 100).shape == (0, 2)
    # median 1; the blacklisted 9s drop to 1 and the -9 to -1; elsewhere untouched
    c = np.ones(32, np.float32)
    c[[2, 3]] = 9
    c[4] = -9
    c[30] = 9
    out = coverage_targets(c, track("sum"), np.array([[0, 8]]), pool_width=4)
    np.testing.assert_array_equal(out, [4, 2, 4, 4, 4, 4, 4, 12])


def test_nan_becomes_the_baseline_which_a_nan_makes_zero():
    c = np.full(32, 2.0, np.float32)
    c[5:7] = np.nan
    c[0] = 50.0
    out = coverage_targets(c, track("sum"), np.array([[0, 1]]), pool_width=4)
    # baseline 0 (the span holds NaN): NaN -> 0 and the blacklisted 50 clipped to [0, 0]
    np.testing.assert_array_equal(out, [6, 4, 8, 8, 8, 8, 8, 8])


@pytest.mark.parametrize("transform", ["basenji", "baskerville"])
def test_every_sum_stat(transform):
    bins = np.array([[0, 0, 0, 8], [1, 2, 3, 6], [3, 3, 3, 3]], dtype=np.float32)  # 3 bins of 4
    c = bins.reshape(-1)
    s, m = bins.sum(1), bins.mean(1)  # 8 12 12 ; 2 3 3
    sqrt = (lambda x: x ** 0.75) if transform == "basenji" else (lambda x: -1 + np.sqrt(1 + x))
    expected = {"sum": s, "mean": m, "avg": m, "max": [8, 6, 3], "median": [0, 2.5, 3],
                "sum_sqrt": sqrt(s), "mean_sqrt": sqrt(m), "avg_sqrt": sqrt(m),
                "peak": np.clip(np.sqrt(4 * m), 0, 1)}
    if transform == "baskerville":
        expected["sum_exp75"] = -1 + (1 + s) ** 0.75
    for stat, want in expected.items():
        np.testing.assert_allclose(pool(c, stat, transform, pool_width=4), want, rtol=1e-6, err_msg=stat)
    # through the whole chain (3 bins: baseline 0, no NaN): float16 of the same
    for stat, want in expected.items():
        out = coverage_targets(c, track(stat), None, transform, pool_width=4)
        assert out.dtype == np.float16
        np.testing.assert_array_equal(out, np.asarray(want, np.float32).astype(np.float16), err_msg=stat)


def test_basenji_transform_pools_then_soft_clips_clips_and_scales():
    c = np.repeat(np.array([13, 2, 100], np.float32), 4) / 4  # bin sums 13, 2, 100
    t = track("sum", clip=6, clip_soft=4, scale=2)
    # 13 -> 4 + sqrt(9) = 7 -> clip 6 -> x2 = 12;  2 -> 4;  100 -> 4 + sqrt(96) -> 6 -> 12
    np.testing.assert_array_equal(coverage_targets(c, t, None, "basenji", pool_width=4), [12, 4, 12])
    soft_only = track("sum", clip_soft=4)
    np.testing.assert_allclose(coverage_targets(c, soft_only, None, "basenji", pool_width=4).astype(np.float32),
                               [7, 2, 4 + np.sqrt(96)], rtol=1e-3)
    np.testing.assert_array_equal(coverage_targets(c, track("sum", scale=0.5), None, pool_width=4), [6.5, 1, 50])


def test_baskerville_transform_scales_first_and_soft_clips_from_the_knee():
    c = np.repeat(np.array([12, 2, 100], np.float32), 4) / 4  # bin sums 12, 2, 100
    t = track("sum", clip=9, clip_soft=4, scale=2)
    # x2 first: 24, 4, 200; 24 -> 4 - 1 + sqrt(24 - 4 + 1) = 3 + sqrt(21); 4 stays (not > 4); 200 -> clip 9
    out = coverage_targets(c, t, None, "baskerville", pool_width=4).astype(np.float32)
    np.testing.assert_allclose(out, [3 + np.sqrt(21), 4, 9], rtol=1e-3)
    # sum_sqrt on scaled values: -1 + sqrt(1 + 2 * 12)
    out = coverage_targets(c, track("sum_sqrt", scale=2), None, "baskerville", pool_width=4).astype(np.float32)
    np.testing.assert_allclose(out, [4, np.sqrt(5) - 1, np.sqrt(201) - 1], rtol=1e-3)


def test_values_beyond_float16_are_clipped_to_its_range():
    c = np.array([1e6, 1e6, -1e6, -1e6, 1, 1], np.float32)
    out = coverage_targets(c, track("sum"), None, pool_width=2)
    np.testing.assert_array_equal(out, np.float16([65504, -65504, 2]))
    assert np.isfinite(out).all()


# --- bigWigs ------------------------------------------------------------------------------------

@pytest.fixture
def signal_bigwig(tmp_path):
    """chr1 (4,096 bp): 1 everywhere, 10 over [896, 1024), 50 over [700, 710); no data over
    [2500, 2600). chr2 (1,024 bp): 3."""
    v = np.ones(4096)
    v[896:1024] = 10
    v[700:710] = 50
    v[2500:2600] = np.nan
    return write_bigwig(tmp_path / "signal.bw", {"chr1": 4096, "chr2": 1024}, {"chr1": v, "chr2": np.full(1024, 3.0)})


@pytest.mark.parametrize("backend", ["pybigtools", "pyBigWig"])
def test_bigwig_reads_values_with_nan_where_no_data(signal_bigwig, backend, monkeypatch):
    module = pytest.importorskip(backend)
    monkeypatch.setattr(coverage, "_backend", lambda: (backend, module))
    with BigWig(signal_bigwig) as bw:
        assert bw.chroms == {"chr1": 4096, "chr2": 1024}
        v = bw.values("chr1", 2490, 2610)
        assert v.dtype == np.float32
        np.testing.assert_array_equal(np.isnan(v), np.r_[np.zeros(10), np.ones(100), np.zeros(10)].astype(bool))
        np.testing.assert_array_equal(bw.values("chr1", 695, 715), [1] * 5 + [50] * 10 + [1] * 5)


def test_region_targets_known_answer(signal_bigwig, tmp_path):
    bed = tmp_path / "black.bed"
    bed.write_text("chr1\t700\t710\nchr1\t2440\t2450\n")
    black = read_blacklist(str(bed))
    t = Track("t", signal_bigwig, "sum", "x", clip=400, clip_soft=384, scale=0.5)
    with BigWig(signal_bigwig) as bw:
        # span [512, 1536): median 1; the 50s (blacklisted) become 1; bin 3 = 10 x 128 = 1280 ->
        # 384 + sqrt(896) -> clip 400 -> x 0.5 = 200; every other bin 128 x 0.5
        out = region_targets([bw], [t], "chr1", 512, 1536, black)
        np.testing.assert_array_equal(out[:, 0], [64, 64, 64, 200, 64, 64, 64, 64])
        # span [2048, 3072) holds the no-data gap [2500, 2600): baseline 0, so the gap and the
        # blacklisted 1s ([2420, 2470) widened) are 0: bin 2 keeps 116 bases of 1, bin 3 30, bin 4 88
        out = region_targets([bw, bw], [t, track("max")], "chr1", 2048, 3072, black)
        np.testing.assert_array_equal(out[:, 0], [64, 64, 58, 15, 44, 64, 64, 64])
        np.testing.assert_array_equal(out[:, 1], [1, 1, 1, 1, 1, 1, 1, 1])


def test_bigwig_errors_name_the_track(signal_bigwig, tmp_path):
    with pytest.raises(UserError, match=r"targets.txt, line 3: bigWig .*nope.bw does not exist"):
        BigWig(str(tmp_path / "nope.bw"), "targets.txt, line 3")
    (tmp_path / "text.bw").write_text("not a bigWig\n" * 10)
    with pytest.raises(UserError, match=r"line 4: cannot read .*text.bw as a bigWig"):
        BigWig(str(tmp_path / "text.bw"), "targets.txt, line 4")
    with BigWig(signal_bigwig) as bw:
        check_chromosomes(bw, {"chr1": "regions.bed, line 1"}, "t")
        with pytest.raises(UserError, match=r"has no chromosome 'chr7' \(used by r.bed, line 2\).*another genome build"):
            check_chromosomes(bw, {"chr7": "r.bed, line 2"}, "targets.txt, line 2")
    numbered = write_bigwig(tmp_path / "numbered.bw", {"1": 100}, {"1": np.ones(100)})
    with BigWig(numbered) as bw:
        with pytest.raises(UserError, match=r"no chromosome 'chr1'.*like '1'.*chr1 vs 1 naming"):
            check_chromosomes(bw, {"chr1": "r.bed, line 1"}, "targets.txt, line 2")


# --- targets.txt --------------------------------------------------------------------------------

def test_targets_txt_columns_defaults_extra_columns_and_paths(tmp_path):
    path = tmp_path / "targets.txt"
    path.write_text("\tidentifier\tfile\tclip\tclip_soft\tscale\tsum_stat\tdescription\tstrand_pair\n"
                    "0\tA+\ta.bw\t384\t320\t0.3\tsum_sqrt\tCAGE:a\t1\n"
                    "1\tA-\t/abs/b.bw\t\t\t\tmean\tCAGE:b\t0\n")
    a, b = read_tracks(str(path))
    assert (a.identifier, a.file, a.clip, a.clip_soft, a.scale, a.sum_stat, a.description, a.line) == (
        "A+", str(tmp_path / "a.bw"), 384.0, 320.0, 0.3, "sum_sqrt", "CAGE:a", 2)
    assert (b.file, b.clip, b.clip_soft, b.scale) == ("/abs/b.bw", None, None, 1.0)
    assert a.fields["strand_pair"] == "1" and a.fields["index"] == "0"
    short = tmp_path / "short.txt"  # no clip / clip_soft / scale columns at all
    short.write_text("index\tidentifier\tfile\tsum_stat\tdescription\n0\tx\tx.bw\tmax\tDNASE:x\n")
    (x,) = read_tracks(str(short))
    assert (x.clip, x.clip_soft, x.scale, x.sum_stat) == (None, None, 1.0, "max")


@pytest.mark.parametrize("text, message", [
    ("index\tidentifier\tclip\tsum_stat\tdescription\n0\tx\t1\tsum\td\n", r"t.txt, line 1: no 'file' column"),
    ("index\tidentifier\tfile\tdescription\n0\tx\tx.bw\td\n", r"t.txt, line 1: no 'sum_stat' column"),
    ("index\tidentifier\tfile\tsum_stat\tdescription\n0\tx\tx.bw\tsum\td\n1\ty\ty.bw\tmode\td\n",
     r"t.txt, line 3: unknown sum_stat 'mode'"),
    ("index\tidentifier\tfile\tsum_stat\tdescription\n0\tx\tx.bw\tsum_exp75\td\n",
     r"t.txt, line 2: sum_stat 'sum_exp75' exists only in the baskerville transform"),
    ("index\tidentifier\tfile\tsum_stat\tdescription\n0\tx\tx.bw\tsum\n", r"t.txt, line 2: 4 tab-separated fields"),
    ("index\tidentifier\tfile\tclip\tsum_stat\tdescription\n0\tx\tx.bw\tbig\tsum\td\n", r"t.txt, line 2: clip 'big'"),
    ("", r"t.txt: empty"),
])
def test_targets_txt_errors_name_the_file_and_line(tmp_path, text, message):
    (tmp_path / "t.txt").write_text(text)
    with pytest.raises(UserError, match=message):
        read_tracks(str(tmp_path / "t.txt"))


def test_targets_txt_sum_exp75_allowed_in_baskerville_transform(tmp_path):
    (tmp_path / "t.txt").write_text("index\tidentifier\tfile\tsum_stat\tdescription\n0\tx\tx.bw\tsum_exp75\td\n")
    assert read_tracks(str(tmp_path / "t.txt"), "baskerville")[0].sum_stat == "sum_exp75"
    with pytest.raises(UserError, match="--transform 'old'"):
        read_tracks(str(tmp_path / "t.txt"), "old")


# --- regions ------------------------------------------------------------------------------------

@pytest.fixture
def genome(tmp_path):
    rng = np.random.default_rng(0)
    seq = lambda n: "".join(rng.choice(list("ACGT"), n))
    return Genome(write_fasta(tmp_path / "g.fa", {
        "chr1": "N" * 400 + seq(1600),  # 2,000 bp, the first 400 N
        "chr2": seq(1000), "chr3": seq(900), "chrShort": seq(100)}))


def test_tile_windows_splits_n_and_blacklist(genome):
    regions = tile(genome, 500, valid_chroms=["chr2"], test_chroms=["chr3"])
    got = [(r.chrom, r.start, r.end, r.split) for r in regions]
    # chr1's first window is 80% N: skipped; chr3 fits one window; chrShort none
    assert got == [("chr1", 500, 1000, "train"), ("chr1", 1000, 1500, "train"), ("chr1", 1500, 2000, "train"),
                   ("chr2", 0, 500, "valid"), ("chr2", 500, 1000, "valid"), ("chr3", 0, 500, "test")]
    strided = [(r.chrom, r.start) for r in tile(genome, 500, stride=250, max_n=0.5) if r.chrom == "chr1"]
    assert strided == [("chr1", 250), ("chr1", 500), ("chr1", 750), ("chr1", 1000), ("chr1", 1250), ("chr1", 1500)]
    black = {"chr2": np.array([[100, 300]])}  # 40% of chr2's first window
    assert [(r.chrom, r.start) for r in tile(genome, 500, blacklist=black) if r.chrom == "chr2"] == [("chr2", 500)]


def test_regions_command_writes_a_bed(genome, tmp_path, capsys):
    black = tmp_path / "black.bed"
    black.write_text("chr1\t1600\t1900\n")
    assert main(["regions", "--fasta", genome.path, "--length", "500", "--valid-chroms", "chr2",
                 "--test-chroms", "chr3", "--blacklist", str(black), "--max-n", "0.5"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == ["chr1\t500\t1000\ttrain", "chr1\t1000\t1500\ttrain", "chr2\t0\t500\tvalid",
                                "chr2\t500\t1000\tvalid", "chr3\t0\t500\ttest"]
    assert "5 regions of 500 bp: train 2, valid 2, test 1" in err
    bed = tmp_path / "r.bed"
    bed.write_text(out)
    assert len(read_regions(str(bed), genome, sequence_length=300, target_length=2, pool_width=128)) == 5
    assert main(["regions", "--fasta", genome.path, "--length", "500", "--valid-chroms", "chrX"]) == 1
    assert "--valid-chroms: 'chrX' is not a sequence" in capsys.readouterr().err
    assert main(["regions", "--fasta", genome.path, "--length", "5000"]) == 1
    assert "no region of 5000 bp" in capsys.readouterr().err


@pytest.mark.parametrize("bed, message", [
    ("chr1\t500\t1000\ttrain\nchr2\t0\t400\tvalid\n", r"r.bed, line 2: region of 400 bp, but line 1 has 500 bp"),
    ("chr1\t500\t1000\ttrain\nchr2\t0\t500\tholdout\n", r"r.bed, line 2: unknown split 'holdout'"),
    ("chr2\t0\t500\ttrain\nchr2\t100\t600\ttrain\nchr2\t450\t950\tvalid\n",
     r"r.bed, line 1: the target span chr2:-134-634 .* leaves the chromosome"),
    ("chr1\t1700\t2200\ttrain\n", r"r.bed, line 1: end 2200 is beyond the end of chr1"),
    ("chr1\t500\t1000\ttrain\nchr9\t0\t500\ttrain\n", r"r.bed, line 2: chromosome 'chr9' is not in the genome"),
])
def test_regions_errors_name_the_bed_line(genome, tmp_path, bed, message):
    (tmp_path / "r.bed").write_text(bed)
    with pytest.raises(UserError, match=message):
        read_regions(str(tmp_path / "r.bed"), genome, sequence_length=500, target_length=6, pool_width=128)


def test_regions_odd_differences_are_refused(genome, tmp_path):
    (tmp_path / "r.bed").write_text("chr1\t500\t1000\ttrain\n")
    with pytest.raises(UserError, match="--context \\(301 bp\\) differs .* by an odd number"):
        read_regions(str(tmp_path / "r.bed"), genome, sequence_length=301, target_length=2, pool_width=128)
