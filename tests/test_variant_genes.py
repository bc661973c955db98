"""variants/genes.py: a GTF's genes and TSSs (strand rule, exon-only and gene-row-only genes, renamed
and missing chromosomes, bad lines), the bins of a gene, and SED / logSED against numbers by hand."""
import gzip
import math
import re

import numpy as np
import pytest
import torch

from enformer_train.errors import UserError
from enformer_train.variants.genes import (
    Annotation,
    Gene,
    gene_bins,
    nearest_tss,
    score_genes,
)
from enformer_train.variants.names import NameMap

ROWS = [
    # G1 '+': transcripts start at 1001 (twice) and 1131 -> TSS 1000, 1130; its exon rows are not used
    '1\ttest\tgene\t1001\t2000\t.\t+\t.\tgene_id "G1"; gene_name "ALPHA";',
    '1\ttest\ttranscript\t1001\t2000\t.\t+\t.\tgene_id "G1"; transcript_id "T1"; gene_name "ALPHA";',
    '1\ttest\texon\t1001\t1100\t.\t+\t.\tgene_id "G1"; transcript_id "T1";',
    '1\ttest\ttranscript\t1131\t2000\t.\t+\t.\tgene_id "G1"; transcript_id "T2";',
    '1\ttest\texon\t900\t1100\t.\t+\t.\tgene_id "G1"; transcript_id "T2";',
    '1\ttest\ttranscript\t1001\t1500\t.\t+\t.\tgene_id "G1"; transcript_id "T3";',
    '1\ttest\tCDS\t1200\t1300\t.\t+\t0\tgene_id "G1"; transcript_id "T1";',
    # G2 '-': one transcript ending at 4000 -> TSS 3999
    '1\ttest\ttranscript\t3001\t4000\t.\t-\t.\tgene_id "G2"; transcript_id "T4"; gene_name "BETA";',
    # G3 '-', exons only, out of order: T5 spans 301-500 -> TSS 499, T6 601-700 -> TSS 699; no gene_name
    '1\ttest\texon\t451\t500\t.\t-\t.\tgene_id "G3"; transcript_id "T5";',
    '1\ttest\texon\t301\t400\t.\t-\t.\tgene_id "G3"; transcript_id "T5";',
    '1\ttest\texon\t601\t700\t.\t-\t.\tgene_id "G3"; transcript_id "T6";',
    # on a chromosome the FASTA lacks: skipped, counted once per gene
    'KI270728.1\ttest\tgene\t1\t500\t.\t+\t.\tgene_id "G5";',
    'KI270728.1\ttest\ttranscript\t1\t500\t.\t+\t.\tgene_id "G5"; transcript_id "T7";',
    'KI270728.1\ttest\ttranscript\t11\t500\t.\t-\t.\tgene_id "G6"; transcript_id "T8";',
    # G4 '+', a gene row only, on chr2 as the FASTA writes it; a '.' strand on a CDS row is no error
    'chr2\ttest\tgene\t101\t200\t.\t+\t.\tgene_id "G4"; gene_name "GAMMA";',
    'chr2\ttest\tstart_codon\t150\t152\t.\t.\t0\tgene_id "G7";',
]


def _write_gtf(path, rows: list[str], gz: bool = False) -> str:
    text = "#!genome-build test\n" + "".join(r + "\n" for r in rows)
    opener = gzip.open if gz else open
    with opener(path, "wt", encoding="utf-8") as f:
        f.write(text)
    return str(path)


@pytest.fixture(params=[False, True], ids=["plain", "gz"])
def annotation(request, tmp_path):
    path = _write_gtf(tmp_path / ("genes.gtf.gz" if request.param else "genes.gtf"), ROWS, gz=request.param)
    names = NameMap({"chr1", "chr2"})
    return Annotation(path, names), names


def test_genes_and_tss(annotation):
    ann, names = annotation
    assert ann.genes == [
        Gene("G1", "ALPHA", "chr1", "+", (1000, 1130)),
        Gene("G2", "BETA", "chr1", "-", (3999,)),
        Gene("G3", "G3", "chr1", "-", (499, 699)),
        Gene("G4", "GAMMA", "chr2", "+", (100,)),
    ]
    assert ann.skipped_chromosomes == {"KI270728.1": 2}
    assert names.renamed == {"1": "chr1"}


def test_genes_near_edges(annotation):
    ann, _ = annotation

    def ids(chrom, start, end):
        return [g.gene_id for g in ann.genes_near(chrom, start, end)]

    assert ids("chr1", 1000, 1001) == ["G1"]  # start inclusive
    assert ids("chr1", 1001, 1130) == []  # end exclusive
    assert ids("chr1", 1001, 1131) == ["G1"]
    assert ids("chr1", 999, 1131) == ["G1"]  # two TSSs, one gene
    assert ids("chr1", 3999, 4000) == ["G2"]
    assert ids("chr1", 3000, 3999) == [] and ids("chr1", 4000, 10_000) == []
    assert ids("chr1", 0, 10_000) == ["G1", "G2", "G3"]  # file order, though G3's TSSs come first
    assert ids("chr1", 600, 1001) == ["G1", "G3"]
    assert ids("chr2", 0, 1000) == ["G4"]
    assert ids("chr3", 0, 1000) == [] and ids("KI270728.1", 0, 1000) == []


def test_attributes_parsed_robustly(tmp_path):
    rows = ['chr1\tt\ttranscript\t11\t20\t.\t+\t.\tgene_id G9; gene_name "two words; one gene" ;transcript_id "T9"',
            'chr1\tt\ttranscript\t31\t40\t.\t+\t.\tgene_idx "X";gene_id"G10"\textra column']
    ann = Annotation(_write_gtf(tmp_path / "a.gtf", rows), NameMap({"chr1"}))
    assert ann.genes == [Gene("G9", "two words; one gene", "chr1", "+", (10,)),
                         Gene("G10", "G10", "chr1", "+", (30,))]


def test_gene_bins_clipping_and_dedup():
    def bins(tss, out_start=1000, bin_size=128, num_bins=6):
        return gene_bins(Gene("g", "g", "c", "+", tuple(tss)), out_start, bin_size, num_bins).tolist()

    assert bins([1000]) == [0, 1]  # bin 0: no left neighbour
    assert bins([1000 + 6 * 128 - 1]) == [4, 5]  # the last base: no right neighbour
    assert bins([999]) == [] and bins([1000 + 6 * 128]) == []  # outside the output
    assert bins([1000 + 2 * 128 + 5, 1000 + 3 * 128 + 7]) == [1, 2, 3, 4]  # neighbours overlap: each bin once
    assert bins([1000 + 2 * 128, 1000 + 3 * 128 - 1]) == [1, 2, 3]  # two TSSs in one bin
    assert bins([1130], out_start=1003) == [0, 1]  # the window moved 3 bases: 1130 is in bin 0 now
    assert bins([500, 1130, 9999]) == [0, 1, 2]
    assert gene_bins(Gene("g", "g", "c", "+", (1130,)), 1000, 128, 6).dtype == np.int64


# Two shifts whose outputs start 3 bases apart, 6 bins of 128, three tracks on '+', '-' and '.'.
# ref[s, b, t] = (b + 1) + 10 t + 100 s, alt = ref + (t + 1) in every bin.
OUT_STARTS = [1000, 1003]
STRANDS = ["+", "-", "."]
PLUS = Gene("P", "P", "chr1", "+", (1130,))  # bin 1 in shift 0: bins {0, 1, 2}; bin 0 in shift 1: {0, 1}
MINUS = Gene("M", "M", "chr1", "-", (1001,))  # bin 0 in shift 0: {0, 1}; before shift 1's output: none
FAR = Gene("F", "F", "chr1", "+", (99_999,))  # in neither output


def _predictions(dtype=torch.float64):
    s, b, t = torch.meshgrid(torch.arange(2), torch.arange(6), torch.arange(3), indexing="ij")
    ref = (b + 1 + 10 * t + 100 * s).to(dtype)
    return ref, ref + (t + 1).to(dtype)


def _l(a, r):
    return math.log2(1 + a) - math.log2(1 + r)


NAN = float("nan")


def test_score_genes_one_track_columns():
    ref, alt = _predictions()
    sed, log_sed = score_genes(ref, alt, OUT_STARTS, 128, [PLUS, MINUS, FAR], [[0], [1], [2]], STRANDS)
    assert sed.dtype == np.float64 and sed.shape == (3, 3)
    # SED: (t + 1) per bin: P over 3 bins then 2; M over 2 bins then none (0)
    np.testing.assert_allclose(sed, [[(3 + 2) / 2, NAN, (9 + 6) / 2],
                                     [NAN, (4 + 0) / 2, (6 + 0) / 2],
                                     [0.0, NAN, 0.0]], rtol=1e-14, atol=0)
    # logSED: P track 0, shift 0: r = 1 + 2 + 3 = 6, a = 9; shift 1: r = 101 + 102 = 203, a = 205
    # P track 2: r = 21 + 22 + 23 = 66, a = 75; r = 121 + 122 = 243, a = 249
    # M track 1: r = 11 + 12 = 23, a = 27, then nothing; M track 2: r = 21 + 22 = 43, a = 49
    np.testing.assert_allclose(log_sed, [[(_l(9, 6) + _l(205, 203)) / 2, NAN, (_l(75, 66) + _l(249, 243)) / 2],
                                         [NAN, _l(27, 23) / 2, _l(49, 43) / 2],
                                         [0.0, NAN, 0.0]], rtol=1e-14, atol=1e-300)


def test_score_genes_summed_columns():
    ref, alt = _predictions()
    genes = [PLUS, MINUS, FAR]
    # a strand pair: only the gene's strand counts
    sed, log_sed = score_genes(ref, alt, OUT_STARTS, 128, genes, [[0, 1], [2]], STRANDS)
    np.testing.assert_allclose(sed, [[2.5, 7.5], [2.0, 3.0], [0.0, 0.0]], rtol=1e-14)
    np.testing.assert_allclose(log_sed, [[(_l(9, 6) + _l(205, 203)) / 2, (_l(75, 66) + _l(249, 243)) / 2],
                                         [_l(27, 23) / 2, _l(49, 43) / 2],
                                         [0.0, 0.0]], rtol=1e-14)
    # two eligible members: logSED of the sums, not the sum of logSEDs
    sed, log_sed = score_genes(ref, alt, OUT_STARTS, 128, genes, [[0, 2], [1, 2]], STRANDS)
    np.testing.assert_allclose(sed, [[2.5 + 7.5, 7.5], [3.0, 2.0 + 3.0], [0.0, 0.0]], rtol=1e-14)
    np.testing.assert_allclose(log_sed, [[(_l(9 + 75, 6 + 66) + _l(205 + 249, 203 + 243)) / 2,
                                          (_l(75, 66) + _l(249, 243)) / 2],
                                         [_l(49, 43) / 2, _l(27 + 49, 23 + 43) / 2],
                                         [0.0, 0.0]], rtol=1e-14)


def _by_definition(ref, alt, out_starts, bin_size, genes, columns, strands):
    """The docstring's definition in plain Python loops."""
    shifts, num_bins, _ = len(ref), len(ref[0]), len(ref[0][0])
    sed, log_sed = [], []
    for gene in genes:
        sed.append([]), log_sed.append([])
        for members in columns:
            members = [t for t in members if strands[t] in (".", gene.strand)]
            if not members:
                sed[-1].append(NAN), log_sed[-1].append(NAN)
                continue
            d = lg = 0.0
            for s in range(shifts):
                bins = set()
                for tss in gene.tss:
                    if out_starts[s] <= tss < out_starts[s] + num_bins * bin_size:
                        b = (tss - out_starts[s]) // bin_size
                        bins |= {x for x in (b - 1, b, b + 1) if 0 <= x < num_bins}
                r = sum(ref[s][b][t] for b in bins for t in members)
                a = sum(alt[s][b][t] for b in bins for t in members)
                d += a - r
                lg += _l(a, r)
            sed[-1].append(d / shifts), log_sed[-1].append(lg / shifts)
    return np.array(sed), np.array(log_sed)


def test_score_genes_random_against_loops():
    rng = np.random.default_rng(0)
    ref = rng.gamma(1.0, 2.0, (3, 8, 4))
    alt = ref * rng.lognormal(0, 0.3, ref.shape)
    genes = [Gene("a", "a", "c", "+", (100, 130, 500, 1100)), Gene("b", "b", "c", "-", (103,)),
             Gene("c", "c", "c", "-", (50, 1123))]
    columns, strands, out_starts = [[0, 1], [2], [3], [1, 3], [0]], ["+", "-", ".", "-"], [100, 103, 97]
    sed, log_sed = score_genes(torch.from_numpy(ref), torch.from_numpy(alt), out_starts, 128, genes, columns, strands)
    want_sed, want_log = _by_definition(ref.tolist(), alt.tolist(), out_starts, 128, genes, columns, strands)
    np.testing.assert_allclose(sed, want_sed, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(log_sed, want_log, rtol=1e-12, atol=1e-12)
    # float32 predictions are summed in float64
    sed32, _ = score_genes(torch.from_numpy(ref).float(), torch.from_numpy(alt).float(), out_starts, 128, genes,
                           columns, strands)
    assert sed32.dtype == np.float64
    np.testing.assert_allclose(sed32, want_sed, rtol=1e-5, atol=1e-5)


def test_score_genes_no_genes():
    ref, alt = _predictions()
    sed, log_sed = score_genes(ref, alt, OUT_STARTS, 128, [], [[0], [1]], STRANDS)
    assert sed.shape == (0, 2) and log_sed.shape == (0, 2)


def test_nearest_tss():
    gene = Gene("g", "g", "c", "-", (100, 200))
    assert nearest_tss(gene, 150) == -50  # a tie: the smaller position
    assert nearest_tss(gene, 160) == 40
    assert nearest_tss(gene, 90) == 10
    assert nearest_tss(gene, 250) == -50
    assert nearest_tss(gene, 200) == 0


GOOD = '1\tt\ttranscript\t11\t20\t.\t+\t.\tgene_id "G1"; transcript_id "T1";'


@pytest.mark.parametrize("bad, message", [
    ('1\tt\ttranscript\t11\t20\t.\t+\t.', "line 3: 8 tab-separated field(s); expected 9"),
    ('1\tt\ttranscript\t11x\t20\t.\t+\t.\tgene_id "G2";', "line 3: start '11x' and end '20' must be integers"),
    ('1\tt\tCDS\t11\t2.5\t.\t+\t.\tgene_id "G2";', "line 3: start '11' and end '2.5' must be integers"),
    ('1\tt\texon\t0\t20\t.\t+\t.\tgene_id "G2";', "line 3: start 0 is before the first base"),
    ('1\tt\ttranscript\t21\t20\t.\t+\t.\tgene_id "G2";', "line 3: start 21 is after end 20"),
    ('1\tt\ttranscript\t11\t20\t.\t.\t.\tgene_id "G2";', "line 3: strand '.' of a transcript row; expected '+' or '-'"),
    ('1\tt\tgene\t11\t20\t.\t?\t.\tgene_id "G2";', "line 3: strand '?' of a gene row"),
    ('1\tt\texon\t11\t20\t.\t+\t.\ttranscript_id "T2";', "line 3: no gene_id attribute"),
    ('1\tt\tgene\t11\t20\t.\t+\t.\tID=gene1;Name=A', "line 3: no gene_id attribute; expected attributes as key"),
    ('1\tt\tgene\t11\t20\t.\t+\t.\tID=gene1;Name=A', "(is it GFF3? --genes reads GTF)"),
])
def test_bad_lines_name_the_line(tmp_path, bad, message):
    path = _write_gtf(tmp_path / "bad.gtf", [GOOD, bad, GOOD])
    with pytest.raises(UserError, match=re.escape(message)) as caught:
        Annotation(path, NameMap({"chr1"}))
    assert str(caught.value).startswith(f"{path}, line 3: ")


def test_bad_files(tmp_path):
    with pytest.raises(UserError, match=re.escape(f"{tmp_path / 'missing.gtf'}: no such GTF file")):
        Annotation(str(tmp_path / "missing.gtf"), NameMap({"chr1"}))
    empty = _write_gtf(tmp_path / "empty.gtf", ['1\tt\tCDS\t11\t20\t.\t+\t0\tgene_id "G1";'])
    with pytest.raises(UserError, match="no gene, transcript or exon rows"):
        Annotation(empty, NameMap({"chr1"}))
    elsewhere = _write_gtf(tmp_path / "mouse.gtf", [GOOD])
    with pytest.raises(UserError, match=r"none of its chromosomes \(1\) is in the FASTA"):
        Annotation(elsewhere, NameMap({"chrX"}))
    truncated = tmp_path / "cut.gtf.gz"
    _write_gtf(truncated, [GOOD] * 2000, gz=True)
    truncated.write_bytes(truncated.read_bytes()[:-30])
    with pytest.raises(UserError, match="reading stopped after line"):
        Annotation(str(truncated), NameMap({"chr1"}))
