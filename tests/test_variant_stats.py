"""variants/stats.py: each variant statistic against numbers worked out by hand or by a plain-Python loop
over the definition, on 2 shifts x 4 bins x 3 tracks (a + and - strand pair, then an unstranded track),
per track and with the strand pair summed into one column; the percentile table against np.percentile."""
import math

import numpy as np
import pytest
import torch

from enformer_train.errors import UserError
from enformer_train.variants.stats import (
    PERCENTILES,
    STATS,
    _order_statistics,
    compute_scores,
    percentile_table,
)

# [shifts][bins][tracks]. ALT - REF is, by shift:
#   [[ 1, -1,  0],      [[ 0,  2, -1],
#    [-2,  0,  3],       [ 3, -1,  0],
#    [ 0,  2, -3],       [-1,  0,  2],
#    [ 1,  0,  1]]       [ 0, -3,  0]]
# (track 2 of shift 0 ties |3| at bins 1 and 2: SAX takes bin 1's +3).
REF = [[[1.0, 2.0, 0.5], [3.0, 0.0, 1.0], [0.5, 4.0, 4.0], [2.0, 1.5, 5.0]],
       [[2.0, 1.0, 1.0], [1.0, 3.0, 0.25], [4.0, 0.5, 3.0], [0.0, 4.0, 2.0]]]
ALT = [[[2.0, 1.0, 0.5], [1.0, 0.0, 4.0], [0.5, 6.0, 1.0], [3.0, 1.5, 6.0]],
       [[2.0, 3.0, 0.0], [4.0, 2.0, 0.25], [3.0, 0.5, 5.0], [0.0, 1.0, 2.0]]]
SHIFTS, BINS, TRACKS = 2, 4, 3
PAIRED = [[0, 1], [2]]  # the strand pair as one column, the unstranded track as another
TOL = {"rtol": 0, "atol": 1e-12}


def _scores(stats, columns=None, ref=REF, alt=ALT):
    return compute_scores(torch.tensor(ref, dtype=torch.float64), torch.tensor(alt, dtype=torch.float64), stats,
                          columns)


def _values(x, shift, tracks):
    """The bins of `tracks` in one shift, one track after another (a column's values)."""
    return [x[shift][b][t] for t in tracks for b in range(len(x[shift]))]


def _expected(per_shift, columns, ref=REF, alt=ALT):
    """[columns]: per_shift(ref values, alt values) of each column's pooled bins, averaged over shifts."""
    return [sum(per_shift(_values(ref, s, c), _values(alt, s, c)) for s in range(len(ref))) / len(ref)
            for c in columns]


def _log2p(x):
    return math.log2(x + 1)


def _rel_entr(x, y):
    """scipy.special.rel_entr for non-negative x and y."""
    if x == 0:
        return 0.0
    return math.inf if y == 0 else x * math.log(x / y)


def _percentile25(values):
    """numpy's default linear percentile by hand: the order statistics either side of index (n - 1) / 4."""
    v = sorted(values)
    index = (len(v) - 1) * 0.25
    below = math.floor(index)
    above = min(below + 1, len(v) - 1)
    return v[below] + (index - below) * (v[above] - v[below])


def _js(r, a):
    pc = _percentile25(r)
    r = [x + pc for x in r]
    a = [x + pc for x in a]
    r = [x / sum(r) for x in r]
    a = [x / sum(a) for x in a]
    return (sum(_rel_entr(x, y) for x, y in zip(r, a)) + sum(_rel_entr(y, x) for x, y in zip(r, a))) / 2


def _close(got, expected):
    np.testing.assert_allclose(got.numpy(), np.asarray(expected, dtype=np.float64), **TOL)


def test_sum_and_sad_by_hand_and_summed_over_the_strand_pair():
    # per shift the column sums of ALT - REF: [0, 1, 1] and [2, -2, 1]
    _close(_scores(["SUM"])["SUM"], [1.0, -0.5, 1.0])
    _close(_scores(["SUM"], PAIRED)["SUM"], [0.5, 1.0])
    s = _scores(["SAD", "SUM", "SAR", "logSUM"])
    assert torch.equal(s["SAD"], s["SUM"]) and torch.equal(s["SAR"], s["logSUM"])


def test_log_and_sqrt_sums():
    tracks = [[t] for t in range(TRACKS)]
    log_sum = _expected(lambda r, a: sum(_log2p(y) - _log2p(x) for x, y in zip(r, a)), tracks)
    sqrt_sum = _expected(lambda r, a: sum(math.sqrt(y) - math.sqrt(x) for x, y in zip(r, a)), tracks)
    s = _scores(["logSUM", "SAR", "sqrtSUM"])
    _close(s["logSUM"], log_sum)
    _close(s["SAR"], log_sum)
    _close(s["sqrtSUM"], sqrt_sum)
    s = _scores(["logSUM", "sqrtSUM"], PAIRED)
    _close(s["logSUM"], [log_sum[0] + log_sum[1], log_sum[2]])
    _close(s["sqrtSUM"], [sqrt_sum[0] + sqrt_sum[1], sqrt_sum[2]])


def test_sax_is_the_signed_difference_at_the_largest_change_averaged_over_shifts():
    # shift 0: -2, +2, +3 (the first of the tied bins); shift 1: +3, -3, +2
    _close(_scores(["SAX"])["SAX"], [0.5, -0.5, 2.5])
    _close(_scores(["SAX"], PAIRED)["SAX"], [0.0, 2.5])


def test_d1_and_d2_by_hand_and_d2_of_a_strand_pair_is_the_root_of_the_summed_squares():
    # L1 per shift [4, 3, 7] and [4, 6, 3]; squared L2 [6, 5, 19] and [10, 14, 5]
    _close(_scores(["D1"])["D1"], [4.0, 4.5, 5.0])
    _close(_scores(["D1"], PAIRED)["D1"], [8.5, 5.0])
    d2 = [(math.sqrt(6) + math.sqrt(10)) / 2, (math.sqrt(5) + math.sqrt(14)) / 2, (math.sqrt(19) + math.sqrt(5)) / 2]
    _close(_scores(["D2"])["D2"], d2)
    _close(_scores(["D2"], PAIRED)["D2"], [math.sqrt(d2[0] ** 2 + d2[1] ** 2), d2[2]])


@pytest.mark.parametrize("prefix, f", [("log", _log2p), ("sqrt", math.sqrt)])
def test_log_and_sqrt_norms(prefix, f):
    tracks = [[t] for t in range(TRACKS)]
    d1 = _expected(lambda r, a: sum(abs(f(y) - f(x)) for x, y in zip(r, a)), tracks)
    d2 = _expected(lambda r, a: math.sqrt(sum((f(y) - f(x)) ** 2 for x, y in zip(r, a))), tracks)
    s = _scores([prefix + "D1", prefix + "D2"])
    _close(s[prefix + "D1"], d1)
    _close(s[prefix + "D2"], d2)
    s = _scores([prefix + "D1", prefix + "D2"], PAIRED)
    _close(s[prefix + "D1"], [d1[0] + d1[1], d1[2]])
    _close(s[prefix + "D2"], [math.hypot(d2[0], d2[1]), d2[2]])


def test_js_per_track_and_a_strand_pair_as_one_distribution_over_both_strands_bins():
    tracks = [[t] for t in range(TRACKS)]
    js = _expected(_js, tracks)
    _close(_scores(["JS"])["JS"], js)
    # the pair's 8 values: its pseudocount sits at index 1.75 of their order, not either track's own
    paired = _expected(_js, PAIRED)
    got = _scores(["JS"], PAIRED)["JS"]
    _close(got, paired)
    assert abs(got[0].item() - (js[0] + js[1])) > 1e-3  # not baskerville's sum of the strands' JS
    # a column's members in any order, columns in any order
    _close(_scores(["JS"], [[2], [1, 0]])["JS"], paired[::-1])


def test_the_reference_rel_entr_is_scipys():
    special = pytest.importorskip("scipy.special")
    for x, y in [(0.2, 0.7), (0.7, 0.2), (0.0, 0.3), (0.0, 0.0), (0.4, 0.0)]:
        assert _rel_entr(x, y) == special.rel_entr(x, y)


def test_js_of_identical_predictions_with_empty_bins_is_zero_not_nan():
    # a quarter and more of the bins zero: pseudocount 0, and rel_entr(0, 0) = 0
    ref = [[[0.0], [0.0], [0.0], [4.0]]] * 2
    assert _scores(["JS", "logJS"], ref=ref, alt=ref)["JS"].tolist() == [0.0]


def test_log_js_normalises_over_bins_where_baskerville_normalises_over_shifts():
    tracks = [[t] for t in range(TRACKS)]
    log_ref = [[[_log2p(x) for x in row] for row in shift] for shift in REF]
    log_alt = [[[_log2p(x) for x in row] for row in shift] for shift in ALT]
    expected = _expected(_js, tracks, log_ref, log_alt)
    got = _scores(["logJS"])["logJS"]
    _close(got, expected)
    _close(_scores(["logJS"], PAIRED)["logJS"], _expected(_js, PAIRED, log_ref, log_alt))

    # baskerville's logJS, following its code: pseudocount and sums over axis 0, the shifts
    ref_log, alt_log = np.log2(np.array(REF) + 1), np.log2(np.array(ALT) + 1)
    pseudocounts = np.percentile(ref_log, 25, axis=0)
    ref_norm = ref_log + pseudocounts
    ref_norm /= ref_norm.sum(axis=0)
    alt_norm = alt_log + pseudocounts
    alt_norm /= alt_norm.sum(axis=0)
    entr = np.vectorize(_rel_entr)
    baskerville = np.mean([(entr(ref_norm[s], alt_norm[s]).sum(axis=0) + entr(alt_norm[s], ref_norm[s]).sum(axis=0)) / 2
                           for s in range(SHIFTS)], axis=0)
    assert np.abs(got.numpy() - baskerville).min() > 1e-4


@pytest.mark.parametrize("bins", [1, 2, 4, 5, 7, 10, 896])
def test_pseudocount_percentile_is_numpys_linear_interpolation(bins):
    x = torch.rand(2, bins, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(bins))
    lower, upper, weight = _order_statistics(x, 0.25)
    np.testing.assert_allclose(torch.lerp(lower, upper, weight).numpy(), np.percentile(x.numpy(), 25, axis=1), **TOL)


def test_ref_and_alt_are_the_predictions_and_summed_over_a_strand_pair():
    s = _scores(["REF", "ALT"])
    assert s["REF"].shape == s["ALT"].shape == (SHIFTS, BINS, TRACKS)
    assert s["REF"].tolist() == REF and s["ALT"].tolist() == ALT
    s = _scores(["REF", "ALT"], PAIRED)
    assert s["REF"].shape == (SHIFTS, BINS, 2)
    for name, x in (("REF", REF), ("ALT", ALT)):
        assert s[name].tolist() == [[[row[0] + row[1], row[2]] for row in shift] for shift in x]


def test_every_statistic_has_a_column_in_the_inputs_dtype():
    ref, alt = torch.tensor(REF, dtype=torch.float32), torch.tensor(ALT, dtype=torch.float32)
    s = compute_scores(ref, alt, STATS, PAIRED)
    assert list(s) == list(STATS)
    for name, score in s.items():
        assert score.dtype == torch.float32
        assert score.shape == ((SHIFTS, BINS, 2) if name in ("REF", "ALT") else (2,))


def test_an_unknown_statistic_is_refused_naming_it_and_the_known_ones():
    with pytest.raises(UserError, match="'SED'.*SAD, SAR, SUM"):
        _scores(["SAD", "SED"])


def test_percentiles_are_baskervilles():
    assert len(PERCENTILES) == 99 + 80 + 100
    assert PERCENTILES[0] == pytest.approx(0.001) and PERCENTILES[99] == pytest.approx(0.1)
    assert PERCENTILES[-1] == pytest.approx(0.999) and np.all(np.diff(PERCENTILES) > 0)


def test_percentile_table_reads_a_block_of_columns_at_a_time():
    table = np.random.default_rng(0).normal(size=(37, 11))
    reads = []

    def read_block(j0, j1):
        reads.append((j0, j1))
        return table[:, j0:j1]

    got = percentile_table(read_block, 37, 11, block_bytes=16 * 37 * 3)
    assert reads == [(0, 3), (3, 6), (6, 9), (9, 11)]
    np.testing.assert_allclose(got, np.percentile(table, 100 * PERCENTILES, axis=0).T, **TOL)
    assert got.shape == (11, len(PERCENTILES)) and got.dtype == np.float64
    assert np.isnan(percentile_table(read_block, 0, 2)).all()
