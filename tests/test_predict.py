"""`enformer-train predict`: windows centred on the region, tiling, track choice, errors."""
import os

import numpy as np
import pytest
import torch

from conftest_data import barnyard_dir
from enformer_train import Enformer, save_model
from enformer_train.cli import main
from enformer_train.compiling import MIN_TORCH, torch_version
from enformer_train.data.formats.genome import Genome
from model_helpers import randomise_, tiny_config


@pytest.fixture
def weights(tmp_path):
    model = Enformer(tiny_config(sequence_length=6144, target_length=16, heads={"human": 8, "mouse": 6})).eval()
    randomise_(model, seed=2)
    save_model(model, tmp_path / "w.safetensors")
    return model, str(tmp_path / "w.safetensors")


def _direct(model, fasta, chrom, window_start):
    """The model on the 6,144 bp starting at window_start, read here with N padding by hand."""
    genome = Genome(fasta)
    length = genome.lengths[chrom]
    codes = np.full(6144, 4, dtype=np.uint8)
    lo, hi = max(window_start, 0), min(window_start + 6144, length)
    codes[lo - window_start:hi - window_start] = genome.fetch(chrom, lo, hi)
    with torch.no_grad():
        return model(torch.from_numpy(codes)[None], head="human")[0].numpy()


def test_predictions_are_centred_on_the_region_and_tiled(weights, tmp_path, capsys):
    model, path = weights
    fasta = os.path.join(barnyard_dir(), "human.fa")
    # a 2,048-bp output span (16 bins of 128) centred on chr1:50,000-51,000 -> span 49,476-51,524
    assert main(["predict", "--checkpoint", path, "--fasta", fasta, "--region", "chr1:50,000-51,000",
                 "--out", str(tmp_path / "p.npz")]) == 0
    out = np.load(tmp_path / "p.npz")
    assert out["predictions"].shape == (16, 8) and int(out["start"]) == 50_500 - 1024 and int(out["bin_size"]) == 128
    assert "predicted chr1:49,476-51,524 (16 bins of 128 bp" in capsys.readouterr().out
    np.testing.assert_allclose(out["predictions"], _direct(model, fasta, "chr1", 50_500 - 3072), rtol=1e-5)
    # near the chromosome start: N padding; a 3,000-bp region needs two adjacent windows
    targets = os.path.join(barnyard_dir(), "human", "targets.txt")
    assert main(["predict", "--checkpoint", path, "--fasta", fasta, "--region", "chr1:0-3000", "--organism", "human",
                 "--tracks", "3,CAGE", "--targets", targets, "--out", str(tmp_path / "q.npz")]) == 0
    out = np.load(tmp_path / "q.npz", allow_pickle=False)
    span_start = 1500 - 2048
    assert int(out["start"]) == span_start and out["predictions"].shape[0] == 32
    cage = [i for i, line in enumerate(open(targets).read().splitlines()[1:]) if line.split("\t")[-1].startswith("CAGE")]
    chosen = list(out["tracks"])
    assert chosen == [3] + cage and all(d.startswith("CAGE") for d in out["descriptions"][1:])
    first = _direct(model, fasta, "chr1", span_start - 2048)  # starts 2,596 bp before the chromosome
    second = _direct(model, fasta, "chr1", span_start)
    np.testing.assert_allclose(out["predictions"], np.concatenate([first, second])[:, chosen], rtol=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(torch_version() < MIN_TORCH,
                    reason="--compile needs torch 2.5 or newer")
def test_compiled_predictions_equal_eager(weights, tmp_path):
    """--compile: a 5,000-bp region (three windows, batches of 2 and 1) gives eager's predictions
    from one graph."""
    from torch._dynamo.utils import counters

    model, path = weights
    fasta = os.path.join(barnyard_dir(), "human.fa")
    args = ["predict", "--checkpoint", path, "--fasta", fasta, "--region", "chr1:50,000-55,000"]
    assert main(args + ["--out", str(tmp_path / "eager.npz")]) == 0
    torch._dynamo.reset()
    counters.clear()
    assert main(args + ["--compile", "--out", str(tmp_path / "compiled.npz")]) == 0
    assert counters["frames"]["ok"] == 1
    eager, compiled = np.load(tmp_path / "eager.npz"), np.load(tmp_path / "compiled.npz")
    assert compiled["predictions"].shape == eager["predictions"].shape == (48, 8)
    np.testing.assert_allclose(compiled["predictions"], eager["predictions"], rtol=1e-5, atol=1e-6)


def test_predict_errors_are_one_line(weights, tmp_path, capsys):
    _, path = weights
    fasta = os.path.join(barnyard_dir(), "human.fa")
    for region, message in (("chr1:5-2", "start must be below end"), ("chr9:1-100", "no sequence named 'chr9'"),
                            ("chr1-1-100", "expected CHROM:START-END")):
        assert main(["predict", "--checkpoint", path, "--fasta", fasta, "--region", region, "--out",
                     str(tmp_path / "x.npz")]) == 1
        err = capsys.readouterr().err.strip()
        assert message in err and err.count("\n") == 0
    assert main(["predict", "--checkpoint", path, "--fasta", fasta, "--region", "chr1:0-100", "--tracks", "99",
                 "--out", str(tmp_path / "x.npz")]) == 1
    assert "track 99 does not exist" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()
    length = Genome(fasta).lengths["chr1"]
    for region, out, message in ((f"chr1:{length}-{length + 500}", "x.npz", f"starts past the end of chr1 ({length:,} bp)"),
                                 ("chr1:0-100", "x.csv", "--out {}: unknown format; name the file .npz"),
                                 ("chr1:0-100", "x", "--out {}: unknown format")):
        assert main(["predict", "--checkpoint", path, "--fasta", fasta, "--region", region, "--out",
                     str(tmp_path / out)]) == 1
        err = capsys.readouterr().err.strip()
        assert message.format(tmp_path / out) in err and err.count("\n") == 0, err
    assert not list(tmp_path.glob("x*"))
