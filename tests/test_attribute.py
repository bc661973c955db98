"""Contribution scores (`enformer-train attribute`): gradient x input against finite differences and
the colab's formula, ISM against predictions of mutated genomes, integrated gradients' completeness,
the reverse-complement average, bigWig output, a resumed and a 2-rank run, and bad input."""
import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from enformer_train import Enformer, save_model
from enformer_train.attribute import Target, input_grad, integrated_gradients, parse_bins
from enformer_train.cli import main
from enformer_train.data.formats.genome import encode
from model_helpers import randomise_, tiny_config

LENGTH = 1024  # tiny_config: 8 bins of 128 bp in, 4 out
COMPLEMENT = str.maketrans("ACGTN", "TGCAN")


def _random_sequence(n: int, seed: int) -> str:
    return "".join(np.random.default_rng(seed).choice(list("ACGT"), n))


def _fasta(path, sequences: dict[str, str]) -> str:
    with open(path, "w") as f:
        for name, seq in sequences.items():
            f.write(f">{name}\n" + "\n".join(seq[i:i + 60] for i in range(0, len(seq), 60)) + "\n")
    return str(path)


def _model(seed=3) -> Enformer:
    torch.manual_seed(0)
    model = Enformer(tiny_config(heads={"human": 5})).eval()
    randomise_(model, seed=seed)
    with torch.no_grad():  # sharper batch norms: a base moves the outputs by more than float32 round-off
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.mul_(0.5)
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("attribute")
    model = _model()
    save_model(model, root / "m.safetensors")
    sequences = {"chr1": _random_sequence(3000, 1), "chr2": _random_sequence(2000, 2)}
    targets = root / "targets.txt"
    names = [("T0", "DNASE:a"), ("T1+", "CAGE:liver +"), ("T1-", "CAGE:liver -"), ("T3", "CHIP:b"), ("T4", "CAGE:brain")]
    with open(targets, "w") as f:
        f.write("index\tgenome\tidentifier\tfile\tclip\tscale\tsum_stat\tdescription\n")
        for i, (ident, desc) in enumerate(names):
            f.write(f"{i}\t0\t{ident}\tx\t384\t1\tsum\t{desc}\n")
    return {"model": model, "weights": str(root / "m.safetensors"), "sequences": sequences,
            "fasta": _fasta(root / "g.fa", sequences), "targets": str(targets), "root": root}


def _attribute(files, out, *extra, region="chr1:1000-1800"):
    args = ["attribute", "--checkpoint", files["weights"], "--fasta", files["fasta"], "--out", str(out), "--quiet",
            "--device", "cpu", "--targets", files["targets"], *(["--region", region] if region else []), *extra]
    assert main(args) == 0
    return dict(np.load(out)) if str(out).endswith(".npz") else None


def _window(seq: str, start: int, length: int = LENGTH) -> str:
    return "".join(seq[i] if 0 <= i < len(seq) else "N" for i in range(start, start + length))


# -- input x gradient -------------------------------------------------------------------------------

def test_input_grad_equals_finite_differences_and_the_colabs_formula(files, tmp_path):
    seq = files["sequences"]["chr1"]
    start = 1400 - LENGTH // 2  # the window centred on chr1:1000-1800
    codes = torch.from_numpy(encode(_window(seq, start)))[None]
    target = Target(parse_bins("1-2", 4), [0, 3], log1p=True)
    # float64: a central difference of the target along one input coordinate, at a few positions
    model64 = _model().double()
    hypothetical, value = input_grad(model64, codes, "human", target)
    x = torch.nn.functional.one_hot(codes.long(), 5)[..., :4].double()
    h = 1e-5
    for position, base in [(3, 0), (500, 2), (511, 1), (700, 3), (1020, 0)]:
        plus, minus = x.clone(), x.clone()
        plus[0, position, base] += h
        minus[0, position, base] -= h
        with torch.no_grad():
            fd = (target(model64(plus, head="human")) - target(model64(minus, head="human"))) / (2 * h)
        assert hypothetical[0, position, base].item() == pytest.approx(fd.item(), rel=1e-6, abs=1e-12)
    # float32, through the command: the colab's contribution_input_grad written out with autograd
    z = _attribute(files, tmp_path / "a.npz", "--bins", "1-2", "--tracks", "0,3", "--transform", "log1p")
    model = copy.deepcopy(files["model"]).requires_grad_(False)  # the colab's tape watches the input alone
    x32 = x.float().requires_grad_(True)
    mask = torch.zeros(4, 5)
    mask[1:3, [0, 3]] = 1
    prediction = (mask * torch.log1p(model(x32, head="human"))).sum() / mask.sum()
    expected = (torch.autograd.grad(prediction, x32)[0] * x32).sum(-1)[0]
    np.testing.assert_allclose(z["scores"][0], expected.detach().numpy(), rtol=1e-5, atol=1e-9)
    assert z["scores"].shape == (1, LENGTH) and z["hypothetical"].shape == (1, LENGTH, 4)
    assert int(z["window_start"][0]) == start and int(z["span_start"][0]) == start
    assert z["prediction"][0] == pytest.approx(prediction.item(), rel=1e-6)
    np.testing.assert_allclose(z["hypothetical"][0], hypothetical[0].numpy(), rtol=1e-3, atol=1e-7)  # 32 vs 64 bits


@pytest.mark.slow
def test_per_track_maps_equal_one_run_per_track_and_mean_centring_subtracts_the_base_mean(files, tmp_path):
    z = _attribute(files, tmp_path / "k.npz", "--tracks", "4,0,2", "--per-track")
    assert z["scores"].shape == (1, 3, LENGTH) and list(z["tracks"]) == [4, 0, 2]
    # in float64, so that the comparison holds on any CPU kernels
    model64 = _model().double()
    codes = torch.from_numpy(encode(_window(files["sequences"]["chr1"], 1400 - LENGTH // 2)))[None]
    maps, values = input_grad(model64, codes, "human", Target([1, 2, 3], [4, 0, 2], per_track=True), rc=True)
    assert maps.shape == (1, 3, LENGTH, 4)
    for j, track in enumerate([4, 0, 2]):
        one, value = input_grad(model64, codes, "human", Target([1, 2, 3], [track]), rc=True)
        torch.testing.assert_close(maps[0, j], one[0], rtol=1e-10, atol=1e-15)
        assert values[0, j].item() == pytest.approx(value[0].item(), rel=1e-12)
    plain64, _ = input_grad(model64, codes, "human", Target([1, 2, 3], [4, 0, 2], per_track=True))
    np.testing.assert_allclose(z["hypothetical"][0], plain64[0].numpy(), rtol=1e-3, atol=1e-6)  # 32 vs 64 bits
    plain = _attribute(files, tmp_path / "p.npz", "--tracks", "4")
    centred = _attribute(files, tmp_path / "c.npz", "--tracks", "4", "--mean-center")
    expected = plain["hypothetical"] - plain["hypothetical"].mean(-1, keepdims=True)
    np.testing.assert_allclose(centred["hypothetical"], expected, rtol=1e-5, atol=1e-10)
    codes = encode(_window(files["sequences"]["chr1"], 1400 - LENGTH // 2))
    np.testing.assert_allclose(centred["scores"][0], expected[0][np.arange(LENGTH), codes], rtol=1e-5, atol=1e-10)


def test_per_track_maps_from_batched_backwards_equal_a_backward_per_track(files, tmp_path):
    """--maps-per-backward N: the tracks' cotangents N at a time in one backward (torch.func's vmap
    through the project's own autograd functions) give the maps of a backward per track."""
    model64 = _model().double()
    codes = torch.from_numpy(encode(_window(files["sequences"]["chr1"], 1400 - LENGTH // 2)))[None]
    codes = torch.cat([codes, codes.flip(1)])  # two windows: the cotangents are batched over windows too
    target = Target([1, 2, 3], [4, 0, 2, 1], per_track=True)
    pair = torch.tensor([0, 2, 1, 3, 4])
    looped, values = input_grad(model64, codes, "human", target, rc=True, strand_pair=pair)
    assert looped.shape == (2, 4, LENGTH, 4)
    for n in (2, 3, 4):  # 3 does not divide the 4 tracks
        batched, batched_values = input_grad(model64, codes, "human", target, rc=True, strand_pair=pair,
                                             maps_per_backward=n)
        torch.testing.assert_close(batched, looped, rtol=1e-10, atol=1e-15)
        torch.testing.assert_close(batched_values, values, rtol=1e-12, atol=0)
    # the weights are held out of autograd meanwhile, and only meanwhile
    assert all(p.requires_grad and p.grad is None for p in model64.parameters())
    # the command (float32): the float64 maps to float32's round-off, as a backward per track gives them
    z = _attribute(files, tmp_path / "three.npz", "--tracks", "4,0,2", "--per-track", "--maps-per-backward", "3")
    maps64, values64 = input_grad(model64, codes[:1], "human", Target([1, 2, 3], [4, 0, 2], per_track=True))
    np.testing.assert_allclose(z["hypothetical"][0], maps64[0].numpy(), rtol=1e-3, atol=1e-6)  # 32 vs 64 bits
    np.testing.assert_allclose(z["prediction"][0], values64[0].numpy(), rtol=1e-6)


def test_rc_averages_the_map_with_the_reverse_complement_genomes_map_flipped_back(files, tmp_path):
    # Track 1 is CAGE:liver + (its partner, 2, is -): on the reverse-complement genome the same
    # target is track 2 over the mirrored bins, and its map read backwards and complemented.
    seq = files["sequences"]["chr1"]
    rc_fasta = _fasta(tmp_path / "rc.fa", {"chr1": seq.translate(COMPLEMENT)[::-1]})
    n = len(seq)
    forward = _attribute(files, tmp_path / "f.npz", "--tracks", "1", "--bins", "0-1")
    reverse = _attribute(dict(files, fasta=rc_fasta), tmp_path / "r.npz", "--tracks", "2", "--bins", "2-3",
                         region=f"chr1:{n - 1800}-{n - 1000}")
    both = _attribute(files, tmp_path / "b.npz", "--tracks", "1", "--bins", "0-1", "--rc")
    flipped = reverse["hypothetical"][0][::-1, ::-1]
    np.testing.assert_allclose(both["hypothetical"][0], (forward["hypothetical"][0] + flipped) / 2, rtol=1e-5,
                               atol=1e-10)
    assert both["prediction"][0] == pytest.approx((forward["prediction"][0] + reverse["prediction"][0]) / 2, rel=1e-6)
    assert not np.allclose(forward["hypothetical"], flipped, rtol=0.1)  # the two strands' maps differ


# -- in-silico mutagenesis ----------------------------------------------------------------------------

@pytest.mark.slow
def test_ism_equals_predictions_of_genomes_with_each_mutation_written_in(files, tmp_path):
    seq = files["sequences"]["chr1"]
    seq = seq[:1403] + "N" + seq[1404:]  # one position that is not ACGT
    fasta = _fasta(tmp_path / "n.fa", {"chr1": seq})
    z = _attribute(dict(files, fasta=fasta), tmp_path / "i.npz", "--method", "ism", "--ism-region",
                   "chr1:1400-1406", "--tracks", "1,3", "--batch-size", "5")
    assert z["hypothetical"].shape == (1, 6, 4) and int(z["skipped"][0]) == 1 and int(z["span_start"][0]) == 1400

    def target(fasta_path):  # predict's answer for the region, over the default bins (1-3) and tracks 1, 3
        out = tmp_path / "p.npz"
        assert main(["predict", "--checkpoint", files["weights"], "--fasta", fasta_path, "--region", "chr1:1300-1500",
                     "--out", str(out), "--tracks", "1,3", "--device", "cpu"]) == 0
        return np.load(out)["predictions"][1:4].astype(np.float64).mean()

    reference = target(fasta)
    assert z["prediction"][0] == pytest.approx(reference, rel=1e-6)
    for k in range(6):
        position = 1400 + k
        for base, letter in enumerate("ACGT"):
            got = z["hypothetical"][0, k, base]
            if seq[position] == "N":
                assert np.isnan(got)
            elif letter == seq[position]:
                assert got == 0
            else:
                mutated = _fasta(tmp_path / "m.fa", {"chr1": seq[:position] + letter + seq[position + 1:]})
                assert got == pytest.approx(target(mutated) - reference, abs=1e-6 * abs(reference))
    rows = z["hypothetical"][0]
    scored = ~np.isnan(rows).any(-1)
    np.testing.assert_allclose(z["scores"][0][scored], -rows[scored].sum(-1) / 3, rtol=1e-6)
    assert np.isnan(z["scores"][0][3])


# -- integrated gradients -----------------------------------------------------------------------------

def test_integrated_gradients_sum_to_the_targets_change_from_the_baseline(files):
    pytest.importorskip("captum")
    model = files["model"]
    codes = torch.from_numpy(encode(_window(files["sequences"]["chr1"], 900)))[None]
    target = Target([1, 2], [0, 4])
    attributions, value, delta = integrated_gradients(model, codes, "human", target, steps=50, batch_size=25)
    with torch.no_grad():
        at_input = target(model(codes, head="human"))[0].item()
        at_baseline = target(model(torch.full((1, LENGTH, 4), 0.25), head="human"))[0].item()
    change = at_input - at_baseline
    assert value.item() == pytest.approx(at_input, rel=1e-6)
    assert attributions.sum().item() - change == pytest.approx(delta.item(), abs=1e-6)
    assert abs(delta.item()) < 0.01 * abs(change)  # 50 steps: the attributions account for the change
    assert attributions.shape == (LENGTH, 4) and (attributions[:, 0] != 0).any()  # not only at the sequence's bases


@pytest.mark.slow
def test_the_command_writes_h5_with_integrated_gradients_and_its_delta(files, tmp_path):
    h5py = pytest.importorskip("h5py")
    pytest.importorskip("captum")
    _attribute(files, tmp_path / "ig.h5", "--method", "integrated-gradients", "--steps", "30", "--tracks", "0,4",
               "--bins", "1-2", "--per-track", "--rc")
    with h5py.File(tmp_path / "ig.h5") as h5:
        assert h5.attrs["method"] == "integrated-gradients" and h5.attrs["organism"] == "human"
        assert json.loads(h5.attrs["options"]) == {"transform": None, "per_track": True, "ism_region": None,
                                                   "steps": 30, "mean_center": False, "rc": True, "bf16": False}
        assert [t.decode() for t in h5["track_names"][:]] == ["DNASE:a", "CAGE:brain"]
        assert list(h5["bins"][:]) == [1, 2] and [c.decode() for c in h5["chrom"][:]] == ["chr1"]
        scores, hypothetical, delta = h5["scores"][:], h5["hypothetical"][:], h5["delta"][:]
        prediction = h5["prediction"][:]
    assert scores.shape == (1, 2, LENGTH) and hypothetical.shape == (1, 2, LENGTH, 4) and delta.shape == (1, 2)
    np.testing.assert_allclose(scores, hypothetical.sum(-1), rtol=1e-5, atol=1e-9)
    assert np.all(np.abs(delta) < 0.05 * np.abs(prediction))


# -- output -------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_bigwigs_hold_the_npz_scores_at_their_positions_and_plot_writes_a_png(files, tmp_path):
    pyBigWig = pytest.importorskip("pyBigWig")
    pytest.importorskip("logomaker")
    bed = tmp_path / "r.bed"
    bed.write_text("chr2\t600\t700\tpeak\nchr1\t200\t300\n# a comment\nchr1\t2500\t2600\n")
    npz = _attribute(files, tmp_path / "s.npz", "--regions", str(bed), "--tracks", "0,1", "--per-track",
                     "--method", "ism", region=None)
    _attribute(files, tmp_path / "s.bw", "--regions", str(bed), "--tracks", "0,1", "--per-track", "--method", "ism",
               "--plot", str(tmp_path / "s.png"), region=None)
    assert list(npz["chrom"]) == ["chr2", "chr1", "chr1"] and list(npz["span_start"]) == [600, 200, 2500]
    for j, track in enumerate([0, 1]):
        bw = pyBigWig.open(str(tmp_path / f"s.track{track}.bw"))
        assert bw.chroms() == {"chr1": 3000, "chr2": 2000}
        for r, (chrom, start) in enumerate(zip(npz["chrom"], npz["span_start"])):
            values = np.array(bw.values(str(chrom), int(start), int(start) + 100))
            np.testing.assert_allclose(values, npz["scores"][r, j], rtol=1e-6)
        bw.close()
    png = (tmp_path / "s.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    # gradient maps of whole windows near the start of chr1: positions before 0 are left out
    _attribute(files, tmp_path / "w.bw", region="chr1:100-200")
    z = _attribute(files, tmp_path / "w.npz", region="chr1:100-200")
    bw = pyBigWig.open(str(tmp_path / "w.bw"))
    start = int(z["span_start"][0])
    assert start < 0 and bw.intervals("chr1")[0][0] == 0
    np.testing.assert_allclose(np.array(bw.values("chr1", 0, start + LENGTH)), z["scores"][0, -start:], rtol=1e-6)
    # overlapping windows cannot share a bigWig: refused before any work, nothing written
    bed.write_text("chr1\t1000\t1100\nchr1\t1500\t1600\n")
    assert main(["attribute", "--checkpoint", files["weights"], "--fasta", files["fasta"], "--regions", str(bed),
                 "--out", str(tmp_path / "o.bw"), "--quiet", "--device", "cpu"]) == 1
    assert not (tmp_path / "o.bw").exists() and not (tmp_path / "o.bw.partial").exists()


@pytest.mark.slow
@pytest.mark.distributed
def test_a_stopped_regions_run_resumes_and_two_ranks_write_the_file_of_one(files, tmp_path, monkeypatch):
    from enformer_train import attribute
    from train_helpers import env

    bed = tmp_path / "r.bed"
    bed.write_text("".join(f"chr1\t{s}\t{s + 64}\n" for s in range(300, 2700, 400)))  # 6 regions
    args = ["--regions", str(bed), "--chunk-size", "2", "--tracks", "1"]
    full = _attribute(files, tmp_path / "full.npz", *args, region=None)
    real, calls = attribute._attribute_one, []

    def stop_in_the_second_chunk(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(attribute, "_attribute_one", stop_in_the_second_chunk)
    out = tmp_path / "part.npz"
    base = ["attribute", "--checkpoint", files["weights"], "--fasta", files["fasta"], "--quiet", "--device", "cpu",
            "--targets", files["targets"], *args]
    assert main(base + ["--out", str(out)]) == 130
    assert not out.exists() and len(list((tmp_path / "part.npz.partial").glob("chunk-*.npz"))) == 1
    assert main(base + ["--out", str(out), "--tracks", "2"]) == 1  # other options on the stopped run's state
    calls.clear()
    monkeypatch.setattr(attribute, "_attribute_one", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert main(base + ["--out", str(out)]) == 0
    assert len(calls) == 4 and not (tmp_path / "part.npz.partial").exists()
    resumed = dict(np.load(out))
    for key in full:
        np.testing.assert_array_equal(resumed[key], full[key], err_msg=key)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "enformer_train", *base, "--out", str(tmp_path / "two.npz")], env=env(),
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("wrote") == 1
    z = dict(np.load(tmp_path / "two.npz"))
    for key in full:
        if z[key].dtype.kind == "f":  # each rank has one thread of two here, this process both: float32
            # gradients summed in other splits differ by up to ~1e-4 of the map's largest value
            np.testing.assert_allclose(z[key], full[key], rtol=1e-4, atol=1e-3 * np.abs(full[key]).max(), err_msg=key)
        else:
            np.testing.assert_array_equal(z[key], full[key], err_msg=key)


# -- bad input ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("extra, region, message", [
    (["--tracks", "CAGE:livr"], "chr1:1000-1800", "--tracks 'CAGE:livr': no track description contains it; close: "
                                                  "'CAGE:liver -', 'CAGE:liver +', 'CAGE:brain'"),
    (["--bins", "2-4"], "chr1:1000-1800", "--bins '2-4': outside the model's output bins 0-3"),
    (["--method", "ism", "--ism-region", "chr1:100-120"], "chr1:1000-1800",
     "--ism-region chr1:100-120: outside the model's input window chr1:888-1912"),
    (["--method", "ism"], "chr1:100-1300", "--region: chr1:100-1300 is 1,200 bp, longer than the model's input"),
    (["--method", "saliency"], "chr1:1000-1800", "--method 'saliency': expected input-grad, ism, integrated-gradients"),
    ([], "chrX:1-100", "has no sequence named 'chrX'"),
    ([], "chr1:5000-5100", "chr1:5000-5100 starts past the end of chr1 (3,000 bp)"),
    (["--mean-center", "--method", "ism"], "chr1:1000-1100", "--mean-center goes with --method input-grad"),
    (["--maps-per-backward", "2"], "chr1:1000-1100", "--maps-per-backward goes with --per-track"),
    (["--maps-per-backward", "0", "--per-track"], "chr1:1000-1100", "--maps-per-backward 0: must be at least 1"),
    (["--maps-per-backward", "2", "--per-track", "--bf16"], "chr1:1000-1100",
     "--maps-per-backward goes without --bf16"),
])
def test_bad_input_is_one_line_and_writes_nothing(files, tmp_path, capsys, extra, region, message):
    out = tmp_path / "o.npz"
    capsys.readouterr()
    code = main(["attribute", "--checkpoint", files["weights"], "--fasta", files["fasta"], "--out", str(out),
                 "--region", region, "--targets", files["targets"], "--device", "cpu", "--quiet", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err and message in err, err
    assert err.startswith("enformer-train attribute: error: ")
    assert not out.exists() and not os.path.exists(str(out) + ".partial")


def test_a_window_past_a_chromosomes_end_reads_n_and_says_so_once(files, tmp_path, capsys):
    capsys.readouterr()
    z = _attribute(files, tmp_path / "e.npz", region="chr2:1900-2000")
    err = capsys.readouterr().err
    assert err.count("run past a chromosome's end") == 1 and "chr2:1900-2000" in err
    past = int(z["window_start"][0]) + LENGTH - 2000
    assert past > 0 and np.all(z["scores"][0, -past:] == 0)  # N has no base to score
    assert main(["attribute", "--checkpoint", files["weights"], "--fasta", files["fasta"], "--region",
                 "chr1:1000-1800", "--out", str(tmp_path / "e.npz"), "--device", "cpu", "--quiet"]) == 1
    assert "exists; pass --force" in capsys.readouterr().err
