"""Distributed validation equals one process; `enformer-train evaluate` writes per-track CSV and a summary."""
import argparse
import collections
import csv
import json
import os

import pytest
import torch

from conftest_data import store_dir
from enformer_train import Enformer
from enformer_train.cli import main
from enformer_train.compiling import MIN_TORCH, for_inference, torch_version
from enformer_train.data.store import Store
from enformer_train.distributed import setup, teardown
from enformer_train.saved import load
from enformer_train.train.validation import assay_tracks, evaluate_store
from model_helpers import free_port, randomise_, spawn_ranks, tiny_config
from train_helpers import overrides, run


def _model():
    model = Enformer(tiny_config(sequence_length=6144, target_length=16, heads={"human": 8, "mouse": 6}))
    randomise_(model, seed=11)
    return model


def _store():
    store = Store(store_dir("human"), "valid")
    store._count = 31  # an odd split: rank shares of 16 and 15, batches of 3 leave short last batches
    return store


def _worker(rank, world_size, port, out):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    world = setup("cpu")
    try:
        stats = evaluate_store(_model(), _store(), "human", world, 3)
        torch.save(stats.sums, os.path.join(out, f"sums{rank}.pt"))
    finally:
        teardown()


@pytest.mark.slow
@pytest.mark.distributed
def test_validation_on_two_ranks_equals_one_rank_on_an_uneven_split(tmp_path):
    spawn_ranks(_worker, (2, free_port(), str(tmp_path)), nprocs=2)
    two = [torch.load(tmp_path / f"sums{r}.pt", weights_only=True) for r in range(2)]
    torch.testing.assert_close(two[0], two[1], rtol=0, atol=0)  # every rank holds the global sums

    os.environ.pop("RANK", None), os.environ.pop("WORLD_SIZE", None)
    one = evaluate_store(_model(), _store(), "human", setup("cpu"), 3)
    assert int(one.sums[0, 0]) == 31 * 16  # every bin of every sample, once
    torch.testing.assert_close(two[0], one.sums, rtol=1e-6, atol=1e-6)
    a, b = one.summary(), type(one).__new__(type(one))
    b.sums = two[0]
    for key, value in a.items():
        assert abs(b.summary()[key] - value) <= 1e-6, key


def test_pearson_from_running_sums_is_per_track_over_all_bins():
    from enformer_train.train.metrics import TrackStats

    g = torch.Generator().manual_seed(0)
    pred = torch.rand(5, 7, 3, generator=g, dtype=torch.float64) + 0.1
    target = pred * torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + 0.3 * torch.rand(5, 7, 3, generator=g,
                                                                                            dtype=torch.float64)
    stats = TrackStats(3, torch.device("cpu"))
    stats.update(pred[:2], target[:2])
    stats.update(pred[2:], target[2:])
    expected = [torch.corrcoef(torch.stack([pred[..., t].flatten(), target[..., t].flatten()]))[0, 1] for t in range(3)]
    torch.testing.assert_close(stats.per_track()["pearson_r"], torch.stack(expected))
    y, x = target.flatten(0, 1), pred.flatten(0, 1)
    r2 = 1 - ((y - x) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)
    torch.testing.assert_close(stats.per_track()["r2"], r2)
    assert abs(stats.summary()["pearson_r"] - float(torch.stack(expected).mean())) < 1e-12


def test_assay_types_by_description_prefix_and_the_figure(tmp_path):
    from enformer_train.evaluate import write_results
    from enformer_train.train.metrics import TrackStats
    from enformer_train.train.validation import ASSAY_PREFIXES

    descriptions = ["CAGE:liver", "DNASE:K562", "ATAC:heart", "CHIP:H3K27ac:K562", "cage:brain", "RNA:liver"]
    assert [next((n for n, p in ASSAY_PREFIXES.items() if d.upper().startswith(p)), None) for d in descriptions] == \
        ["CAGE", "DNASE/ATAC", "DNASE/ATAC", "CHIP", "CAGE", None]
    g = torch.Generator().manual_seed(0)
    pred = torch.rand(4, 8, 6, generator=g, dtype=torch.float64)
    target = pred * torch.linspace(-1, 1, 6, dtype=torch.float64) + 0.2 * torch.rand(4, 8, 6, generator=g, dtype=torch.float64)
    stats = TrackStats(6, torch.device("cpu"))
    stats.update(pred, target)
    r = stats.per_track()["pearson_r"]
    assays = {"CAGE": [0, 4], "DNASE/ATAC": [1, 2], "CHIP": [3]}
    summary = write_results(tmp_path, {"human": (stats, assays, [])}, {"split": "test"})["organisms"]["human"]
    assert summary["pearson_r_by_assay"] == pytest.approx({"CAGE": float(r[[0, 4]].mean()),
                                                           "DNASE/ATAC": float(r[[1, 2]].mean()), "CHIP": float(r[3])})
    assert summary["pearson_r_cage"] == pytest.approx(float(r[[0, 4]].mean()))
    assert summary["pearson_r"] == pytest.approx(float(r.mean()))
    assert (tmp_path / "evaluate-human.png").stat().st_size > 10_000


@pytest.mark.slow
def test_evaluate_command_writes_tracks_and_summary(tmp_path, capsys):
    run(1, overrides(tmp_path / "run", 2, 4))
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run"), "--split", "test", "--out", str(tmp_path / "ev")]) == 0
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["step"] == 2 and summary["split"] == "test"
    assert set(summary["organisms"]) == {"human", "mouse"}
    assert summary["organisms"]["human"]["bins"] == 32 * 16
    rows = list(csv.DictReader((tmp_path / "ev" / "tracks-mouse.csv").open()))
    assert len(rows) == 6 and list(rows[0]) == ["track", "identifier", "description", "pearson_r", "r2", "poisson_loss"]
    targets = list(csv.DictReader(open(os.path.join(store_dir("mouse"), "targets.txt")), delimiter="\t"))
    assert [r["description"] for r in rows] == [t["description"] for t in targets] and rows[0]["description"]
    mean = sum(float(r["pearson_r"]) for r in rows) / 6
    assert abs(mean - summary["organisms"]["mouse"]["pearson_r"]) < 1e-5
    # the mean R per assay type (by the description's prefix) and the figure of its distribution
    for organism in ("human", "mouse"):
        rows = list(csv.DictReader((tmp_path / "ev" / f"tracks-{organism}.csv").open()))
        config = load(str(tmp_path / "run")).config
        groups = assay_tracks(Store(config.data.stores[organism], "test"))
        assert set(groups) == {"CAGE", "DNASE/ATAC", "CHIP"}
        by_assay = summary["organisms"][organism]["pearson_r_by_assay"]
        for name, tracks in groups.items():
            assert abs(by_assay[name] - sum(float(rows[t]["pearson_r"]) for t in tracks) / len(tracks)) < 1e-5
        assert (tmp_path / "ev" / f"evaluate-{organism}.png").stat().st_size > 10_000
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run"), "--split", "test", "--out", str(tmp_path / "tta"),
                 "--tta"]) == 0
    tta = json.loads((tmp_path / "tta" / "summary.json").read_text())
    assert tta["tta"] is True and tta["organisms"]["human"]["bins"] == 32 * 16
    assert tta["organisms"]["human"]["pearson_r"] != summary["organisms"]["human"]["pearson_r"]
    assert main(["evaluate", "--checkpoint", str(tmp_path / "nothing"), "--split", "test", "--out", str(tmp_path / "x")]) == 1
    assert "no such checkpoint" in capsys.readouterr().err

    # a model file (released weights, or a run's model.safetensors) with the stores to evaluate on
    weights = str(tmp_path / "run" / "model.safetensors")
    assert main(["evaluate", "--checkpoint", weights, "--split", "test", "--out", str(tmp_path / "w")]) == 1
    assert "a model file names no stores; give --store STORE" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", weights, "--store", store_dir("human"), "--store",
                 f"mouse={store_dir('mouse')}", "--split", "test", "--out", str(tmp_path / "w")]) == 0
    from_weights = json.loads((tmp_path / "w" / "summary.json").read_text())
    for organism in ("human", "mouse"):
        assert abs(from_weights["organisms"][organism]["pearson_r"] - summary["organisms"][organism]["pearson_r"]) < 1e-6
    assert main(["evaluate", "--checkpoint", weights, "--store", f"rat={store_dir('human')}", "--split", "test",
                 "--out", str(tmp_path / "w")]) == 1
    assert "the model has no head 'rat' (heads: human, mouse)" in capsys.readouterr().err


@pytest.mark.parametrize("content", ["random", "pickle"])
def test_evaluate_and_convert_on_foreign_files_say_what_is_expected(tmp_path, capsys, content):
    path = tmp_path / "model.pt"
    if content == "random":
        path.write_bytes(os.urandom(4096))
    else:
        torch.save({"model": collections.OrderedDict(a=torch.zeros(1)), "optimizer": argparse.Namespace(lr=1)}, path)
    assert main(["evaluate", "--checkpoint", str(path), "--out", str(tmp_path / "x")]) == 1
    assert main(["convert", str(path), str(tmp_path / "out.safetensors")]) == 1
    evaluate_err, convert_err = capsys.readouterr().err.strip().splitlines()
    for err in (evaluate_err, convert_err):
        assert "weights_only" not in err and "trust" not in err, err
    what = "not a PyTorch file" if content == "random" else "holds Python objects besides tensors"
    assert what in evaluate_err and "expected a training checkpoint" in evaluate_err
    assert what in convert_err and "expected an enformer-pytorch state dict" in convert_err


@pytest.mark.slow
@pytest.mark.skipif(torch_version() < MIN_TORCH,
                    reason="--compile needs torch 2.5 or newer")
def test_compiled_evaluation_equals_eager_and_compiles_once():
    """evaluate --compile: 11 batches (10 of 3, one of 1) give eager's sums from one graph."""
    from torch._dynamo.utils import counters

    world = setup("cpu")
    try:
        eager = evaluate_store(_model(), _store(), "human", world, 3)
        torch._dynamo.reset()
        counters.clear()
        compiled = evaluate_store(for_inference(_model()), _store(), "human", world, 3)
    finally:
        teardown()
    assert counters["frames"]["ok"] == 1
    # float32 predictions summed in another order: the sums (of predictions, their squares and their
    # products with the targets) to 1e-6 (measured 1e-7); an untrained model's predictions vary little
    # over bins, so its Pearson r is a difference of near-equal sums: 3e-6 apart, measured
    torch.testing.assert_close(compiled.sums, eager.sums, rtol=1e-6, atol=0)
    want, got = eager.per_track(), compiled.per_track()
    torch.testing.assert_close(got["poisson_loss"], want["poisson_loss"], rtol=1e-6, atol=0)
    for key in ("pearson_r", "r2"):
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=3e-5, msg=key)
