"""score-variants' options after SAD: shifts, baskerville's statistics on the model's own windows,
summed strands, gene scores, percentiles, chromosome names, and a VCF read as a stream."""
import gc
import gzip

import numpy as np
import pytest
from test_variants import (  # noqa: F401
    LENGTH,
    _alt_window,
    _many_variants,
    _predict,
    _read_tsv,
    _scores,
    _window,
    _write_fasta,
    _write_vcf,
    genome,
    model_file,
    targets_file,
)

from enformer_train.cli import main
from enformer_train.variants.stats import PERCENTILES
from enformer_train.variants.vcf import Variant

h5py = pytest.importorskip("h5py")

BIN = 128
CROP = (LENGTH - 4 * BIN) // 2  # the test model: 4 output bins of 128 bp in the middle of 1,024


def _shifted(model, s: str, pos: int, ref: str, alt: str, shifts) -> tuple[np.ndarray, np.ndarray]:
    """[shifts, bins, tracks] predictions of windows built by hand: shift k moves the window k bases
    left on the genome, so the variant sits at index L/2 + k in both."""
    refs, alts = [], []
    for k in shifts:
        left = LENGTH // 2 + k
        ref_w, alt_w = _window(s, pos - 1 - left), _alt_window(s, pos, ref, alt, left)
        assert ref_w[left:left + len(ref)] == ref and alt_w[left:left + len(alt)] == alt
        refs.append(_predict(model, ref_w))
        alts.append(_predict(model, alt_w))
    return np.stack(refs), np.stack(alts)


def test_shifts_and_baskervilles_statistics_equal_the_model_on_shifted_windows(genome, model_file, tmp_path):
    sequences, fasta = genome
    model, path = model_file
    s = sequences["chr1"]
    snv = "A" if s[1999] != "A" else "C"
    rows = [f"chr1\t2000\tsnv\t{s[1999]}\t{snv}", f"chr1\t3000\tdel\t{s[2999:3003]}\t{s[2999]}"]
    vcf = _write_vcf(tmp_path / "v.vcf", rows)
    shifts = [-1, 0, 2]
    base = ["score-variants", "--checkpoint", path, "--fasta", fasta, "--vcf", vcf, "--quiet"]
    stats = "SAD,SAR,sqrtSUM,SAX,D1,logD1,D2,sqrtD2,JS"
    # batch 1: the windows go through the model as _predict sends them, so the same bits come out
    assert main(base + ["--batch-size", "1", "--shifts=-1,0,2", "--stats", stats, "--out", str(tmp_path / "s.tsv")]) == 0
    assert main(base + ["--batch-size", "1", "--stats", "SAD", "--out", str(tmp_path / "one.tsv")]) == 0
    # batches of 3 windows across the two positions' shifts and alleles
    assert main(base + ["--batch-size", "3", "--shifts=-1,0,2", "--stats", "REF,ALT,D1", "--tracks", "0,3",
                        "--out", str(tmp_path / "bins.h5")]) == 0
    for k, (pos, ref, alt) in enumerate([(2000, s[1999], snv), (3000, s[2999:3003], s[2999])]):
        r, a = _shifted(model, s, pos, ref, alt, shifts)
        d = a - r
        expected = {
            "SAD": d.sum(1).mean(0),
            "SAR": (np.log2(a + 1) - np.log2(r + 1)).sum(1).mean(0),
            "sqrtSUM": (np.sqrt(a) - np.sqrt(r)).sum(1).mean(0),
            "SAX": np.mean([d[i, np.abs(d[i]).argmax(0), np.arange(5)] for i in range(3)], 0),
            "D1": np.abs(d).sum(1).mean(0),
            "logD1": np.abs(np.log2(a + 1) - np.log2(r + 1)).sum(1).mean(0),
            "D2": np.sqrt((d ** 2).sum(1)).mean(0),
            "sqrtD2": np.sqrt(((np.sqrt(a) - np.sqrt(r)) ** 2).sum(1)).mean(0),
        }
        for stat, want in expected.items():
            # the same float32 predictions, summed in float64 in another order; the TSV has 6 digits
            np.testing.assert_allclose(_scores(tmp_path / "s.tsv", stat)[k], want, rtol=1e-5, atol=1e-9, err_msg=stat)
        pc = np.percentile(r, 25, axis=1, keepdims=True)
        rn, an = (r + pc) / (r + pc).sum(1, keepdims=True), (a + pc) / (a + pc).sum(1, keepdims=True)
        js = ((rn * np.log(rn / an)).sum(1) + (an * np.log(an / rn)).sum(1)) / 2
        np.testing.assert_allclose(_scores(tmp_path / "s.tsv", "JS")[k], js.mean(0), rtol=2e-2, atol=1e-9)
        # the shifts change the answer: averaging over them is no no-op
        assert np.abs(_scores(tmp_path / "one.tsv")[k] - expected["SAD"]).max() > 1e-2 * np.abs(expected["SAD"]).max()
        with h5py.File(tmp_path / "bins.h5") as f:
            assert f["REF"].shape == (2, 3, 4, 2) and f["REF"].dtype == np.float16
            np.testing.assert_allclose(f["REF"][k], r[..., [0, 3]], rtol=1e-3, atol=1e-4)
            np.testing.assert_allclose(f["ALT"][k], a[..., [0, 3]], rtol=1e-3, atol=1e-4)


def test_per_bin_predictions_need_tracks_and_an_h5(genome, model_file, tmp_path, capsys):
    sequences, fasta = genome
    vcf = _write_vcf(tmp_path / "v.vcf", _many_variants(sequences["chr1"], 6))  # 9 variants
    base = ["score-variants", "--checkpoint", model_file[1], "--fasta", fasta, "--vcf", vcf, "--quiet"]
    assert main(base + ["--stats", "SAD,REF", "--shifts", "0,1", "--out", str(tmp_path / "a.h5")]) == 1
    err = capsys.readouterr().err.strip()
    # 9 variants x 2 shifts x 4 bins x 5 tracks x 2 bytes
    assert err.count("\n") == 0 and "0.0 GiB for 9 variants x 2 shift(s) x 4 bins x 5 tracks" in err, err
    assert "choose tracks with --tracks" in err
    assert main(base + ["--stats", "ALT", "--tracks", "0", "--out", str(tmp_path / "a.tsv")]) == 1
    assert "per-bin predictions go into an .h5 output only" in capsys.readouterr().err
    assert main(base + ["--percentiles", "--out", str(tmp_path / "a.tsv")]) == 1
    assert "--percentiles: written into an .h5 output only" in capsys.readouterr().err
    assert main(base + ["--stats", "SAD,XYZ", "--out", str(tmp_path / "a.h5")]) == 1
    assert "--stats 'XYZ': expected some of SAD, SAR, SUM" in capsys.readouterr().err
    assert main(base + ["--shifts", "0,a", "--out", str(tmp_path / "a.h5")]) == 1
    assert "--shifts '0,a': expected integers" in capsys.readouterr().err
    assert not list(tmp_path.glob("a.*"))


def test_sum_strands_makes_one_column_of_a_pair(genome, model_file, targets_file, tmp_path, capsys):
    sequences, fasta = genome
    vcf = _write_vcf(tmp_path / "v.vcf", _many_variants(sequences["chr1"], 4))
    base = ["score-variants", "--checkpoint", model_file[1], "--fasta", fasta, "--vcf", vcf, "--quiet",
            "--targets", targets_file, "--stats", "SAD,D2,logD1"]
    assert main(base + ["--out", str(tmp_path / "each.tsv")]) == 0
    assert main(base + ["--sum-strands", "--out", str(tmp_path / "summed.tsv")]) == 0
    header = _read_tsv(tmp_path / "summed.tsv")[0]
    assert header[6:10] == ["SAD:T0", "SAD:T1+/T1-", "SAD:T3", "SAD:T4"]
    for stat in ("SAD", "logD1"):
        each, summed = _scores(tmp_path / "each.tsv", stat), _scores(tmp_path / "summed.tsv", stat)
        np.testing.assert_allclose(summed, np.stack([each[:, 0], each[:, 1] + each[:, 2], each[:, 3], each[:, 4]], 1),
                                   rtol=2e-5, atol=1e-9, err_msg=stat)
    each, summed = _scores(tmp_path / "each.tsv", "D2"), _scores(tmp_path / "summed.tsv", "D2")
    np.testing.assert_allclose(summed[:, 1], np.hypot(each[:, 1], each[:, 2]), rtol=2e-5)
    assert main(base + ["--sum-strands", "--tracks", "1,3", "--out", str(tmp_path / "y.h5")]) == 1
    err = capsys.readouterr().err.strip()
    assert "--sum-strands: track 1 (T1+) has its strand partner 2 (T1-" in err and "outside --tracks" in err, err
    assert main(["score-variants", "--checkpoint", model_file[1], "--fasta", fasta, "--vcf", vcf, "--sum-strands",
                 "--out", str(tmp_path / "z.h5")]) == 1
    assert "--sum-strands: needs targets.txt with strand pairs" in capsys.readouterr().err


def _gtf(path, rows: list[tuple]) -> str:
    with gzip.open(path, "wt") as f:
        f.write("#!genome-build test\n")
        for chrom, feature, start, end, strand, attrs in rows:
            f.write(f"{chrom}\ttest\t{feature}\t{start}\t{end}\t.\t{strand}\t.\t{attrs}\n")
    return str(path)


def test_gene_scores_sum_the_tss_bins_on_the_genes_strand(genome, model_file, targets_file, tmp_path):
    sequences, fasta = genome
    model, path = model_file
    s = sequences["chr1"]
    # the variant at 2000 (pos0 1999): output [1743, 2255) in bins starting 1743, 1871, 1999, 2127
    gtf = _gtf(tmp_path / "genes.gtf.gz", [
        ("chr1", "gene", 1901, 2600, "+", 'gene_id "G1"; gene_name "ONE";'),
        ("chr1", "transcript", 1901, 2600, "+", 'gene_id "G1"; transcript_id "G1.1"; gene_name "ONE";'),  # TSS 1900: bin 1
        ("chr1", "transcript", 1100, 2200, "-", 'gene_id "G2"; transcript_id "G2.1";'),  # TSS 2199: bin 3
        ("chr1", "transcript", 4501, 4900, "+", 'gene_id "G3"; transcript_id "G3.1"; gene_name "THREE";'),
    ])
    snv = "A" if s[1999] != "A" else "C"
    far = "A" if s[4399] != "A" else "C"
    vcf = _write_vcf(tmp_path / "v.vcf", [f"chr1\t2000\tnear\t{s[1999]}\t{snv}", f"chr1\t4400\tfar\t{s[4399]}\t{far}"])
    base = ["score-variants", "--checkpoint", path, "--fasta", fasta, "--vcf", vcf, "--quiet", "--genes", gtf,
            "--targets", targets_file, "--shifts", "0,1"]
    assert main(base + ["--out", str(tmp_path / "s.tsv")]) == 0
    assert main(base + ["--out", str(tmp_path / "s.h5")]) == 0
    header, table = _read_tsv(tmp_path / "s.genes.tsv")
    assert header[:6] == ["variant", "snp", "gene_id", "gene_name", "strand", "distance"]
    assert header[6:] == [f"{st}:{t}" for st in ("SED", "logSED") for t in ("T0", "T1+", "T1-", "T3", "T4")]
    assert [r[:6] for r in table] == [["0", "near", "G1", "ONE", "+", str(1900 - 1999)],
                                      ["0", "near", "G2", "G2", "-", str(2199 - 1999)],
                                      ["1", "far", "G3", "THREE", "+", str(4500 - 4399)]]
    values = np.array([[float(x) for x in r[6:]] for r in table])
    for row, (pos, alt, tss, strand) in enumerate([(2000, snv, 1900, "+"), (2000, snv, 2199, "-"),
                                                    (4400, far, 4500, "+")]):
        r, a = _shifted(model, s, pos, s[pos - 1], alt, [0, 1])
        sed, log_sed = [], []
        for k in (0, 1):  # shift k: the window starts k bases further left, so do its bins
            out_start = pos - 1 - (LENGTH // 2 + k) + CROP
            b = (tss - out_start) // BIN
            bins = [x for x in (b - 1, b, b + 1) if 0 <= x < 4]
            sed.append(a[k, bins].sum(0) - r[k, bins].sum(0))
            log_sed.append(np.log2(1 + a[k, bins].sum(0)) - np.log2(1 + r[k, bins].sum(0)))
        want = np.concatenate([np.mean(sed, 0), np.mean(log_sed, 0)])
        other = 2 if strand == "+" else 1  # the track of the other strand has no score for this gene
        want[[other, 5 + other]] = np.nan
        np.testing.assert_allclose(values[row], want, rtol=1e-3, atol=3e-6, err_msg=str(row))
    with h5py.File(tmp_path / "s.h5") as f:
        g = f["genes"]
        assert list(g["variant"][:]) == [0, 0, 1] and [x.decode() for x in g["gene_id"][:]] == ["G1", "G2", "G3"]
        assert list(g["distance"][:]) == [-99, 200, 101]
        np.testing.assert_allclose(g["SED"][:].astype(np.float64), values[:, :5], rtol=2e-3, atol=1e-4)


def test_percentiles_are_each_tracks_distribution_over_the_variants(genome, model_file, tmp_path, monkeypatch):
    from enformer_train.variants import output

    sequences, fasta = genome
    vcf = _write_vcf(tmp_path / "v.vcf", _many_variants(sequences["chr1"], 20))  # 30 variants
    args = ["score-variants", "--checkpoint", model_file[1], "--fasta", fasta, "--vcf", vcf, "--quiet",
            "--stats", "SAD,D1", "--percentiles", "--chunk-size", "7"]
    assert main(args + ["--out", str(tmp_path / "p.h5")]) == 0
    # h5 chunks of 4 rows x 2 columns: rows gathered across the 7-variant chunks, columns read in bands
    monkeypatch.setattr(output, "ROWS", 4)
    monkeypatch.setattr(output, "COLUMNS", 2)
    assert main(args + ["--out", str(tmp_path / "banded.h5")]) == 0
    with h5py.File(tmp_path / "p.h5") as f, h5py.File(tmp_path / "banded.h5") as banded:
        assert banded["SAD"].chunks == (4, 2) and f["SAD"].chunks == (30, 5)
        np.testing.assert_allclose(f["percentiles"][:], PERCENTILES)
        assert PERCENTILES[0] == pytest.approx(0.001) and PERCENTILES[-1] == pytest.approx(0.999)
        for stat in ("SAD", "D1"):
            column = f[stat][:].astype(np.float64)
            want = np.percentile(column, 100 * PERCENTILES, axis=0).T
            assert f[f"{stat}_pct"].shape == (5, len(PERCENTILES))
            np.testing.assert_array_equal(f[f"{stat}_pct"][:], want.astype(np.float16))
            np.testing.assert_array_equal(banded[stat][:], f[stat][:])
            np.testing.assert_array_equal(banded[f"{stat}_pct"][:], f[f"{stat}_pct"][:])


def test_chromosome_names_are_mapped_to_the_fastas(genome, model_file, tmp_path, capsys):
    sequences, fasta = genome
    rows = _many_variants(sequences["chr1"], 5)
    named = _write_vcf(tmp_path / "chr.vcf", rows)
    bare = _write_vcf(tmp_path / "bare.vcf", [r.replace("chr1", "1", 1) for r in rows])
    base = ["score-variants", "--checkpoint", model_file[1], "--fasta", fasta, "--stats", "SAD,SAR", "--quiet"]
    assert main(base + ["--vcf", named, "--out", str(tmp_path / "a.tsv")]) == 0
    capsys.readouterr()
    assert main(base + ["--vcf", bare, "--out", str(tmp_path / "b.tsv")]) == 0
    assert "chromosomes named as the FASTA names them: 1 -> chr1" in capsys.readouterr().out
    a, b = _read_tsv(tmp_path / "a.tsv")[1], _read_tsv(tmp_path / "b.tsv")[1]
    assert {r[1] for r in b} == {"1"}  # the output keeps the VCF's names
    assert [r[2:] for r in a] == [r[2:] for r in b]
    # the reverse: a FASTA that says 1 for a VCF that says chr1
    other = _write_fasta(tmp_path / "bare.fa", {"1": sequences["chr1"], "2": sequences["chr2"]})
    assert main(base[:2] + [model_file[1], "--fasta", other, "--vcf", named, "--stats", "SAD,SAR", "--quiet",
                            "--out", str(tmp_path / "c.tsv")]) == 0
    assert [r[2:] for r in _read_tsv(tmp_path / "c.tsv")[1]] == [r[2:] for r in a]
    # no spelling of it in the FASTA: the line and the FASTA's names
    missing = _write_vcf(tmp_path / "x.vcf", rows[:2] + ["7\t100\tx\tA\tC"])
    assert main(base + ["--vcf", missing, "--out", str(tmp_path / "x.tsv")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "x.vcf, line 5: chromosome '7' is not in" in err and "chr1, chr2" in err, err


@pytest.mark.slow
def test_the_vcf_is_read_as_a_stream_never_whole(genome, model_file, tmp_path, monkeypatch):
    """Scoring holds the variants of about one chunk, however long the VCF."""
    from enformer_train.variants import command

    sequences, fasta = genome
    vcf = _write_vcf(tmp_path / "v.vcf", _many_variants(sequences["chr1"], 40))  # 60 variants
    live = []
    real = command.Scorer.score

    def count(self, chunk, *rest):
        gc.collect()
        live.append(sum(isinstance(o, Variant) for o in gc.get_objects()))
        return real(self, chunk, *rest)

    monkeypatch.setattr(command.Scorer, "score", count)
    assert main(["score-variants", "--checkpoint", model_file[1], "--fasta", fasta, "--vcf", vcf, "--quiet",
                 "--chunk-size", "4", "--out", str(tmp_path / "s.h5")]) == 0
    assert len(live) >= 12 and max(live) <= 2 * 5, live  # chunks of 4-5 variants, never the 60
    with h5py.File(tmp_path / "s.h5") as f:
        assert f["SAD"].shape == (60, 5)
