"""Data preparation and evaluation under faults (issue 14, points 12-13): a worker killed by the
kernel (out of memory) ends prepare at once and a rerun gives the same store; non-finite targets
are refused or replaced by prepare and reported by evaluate."""
from __future__ import annotations

import json
import os
import signal
import time

import pytest

from conftest_data import TINY_SEQUENCE_LENGTH, barnyard_copy, barnyard_dir, store_dir  # noqa: F401 (fixture)
from enformer_train.data.producers import prepare as prepare_module
from enformer_train.errors import UserError

_convert_file = prepare_module._convert_file


def _killed_on_train_file_2(task):
    """_convert_file, but the worker converting train file 2 dies as the OOM killer kills it."""
    if task[0] == "train" and task[1] == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return _convert_file(task)


def _prepare(out, **kw):
    root = barnyard_dir()
    args = dict(sequence_length=TINY_SEQUENCE_LENGTH, max_shift=3, workers=2, records_per_file=64, progress=False)
    args.update(kw)
    return prepare_module.prepare(str(out), "human", os.path.join(root, "human.fa"), os.path.join(root, "human"),
                                  **args)


# -- 12: a worker killed by SIGKILL ---------------------------------------------------------------

def test_a_killed_worker_ends_prepare_naming_its_file_and_a_rerun_gives_the_same_store(tmp_path, monkeypatch):
    reference = store_dir("human")
    monkeypatch.setattr(prepare_module, "_convert_file", _killed_on_train_file_2)
    start = time.monotonic()
    with pytest.raises(UserError, match=r"killed by SIGKILL while converting train file 2 \(.*train-2\.tfr\).*"
                                        r"out of memory"):
        _prepare(tmp_path / "s")
    assert time.monotonic() - start < 60
    monkeypatch.undo()
    manifest = _prepare(tmp_path / "s")
    assert manifest["prepare"]["files_converted"] + manifest["prepare"]["files_from_earlier_runs"] == 6
    assert manifest["prepare"]["files_converted"] >= 1
    for name in sorted(os.listdir(reference)):
        if name != "manifest.json":
            assert open(tmp_path / "s" / name, "rb").read() == open(os.path.join(reference, name), "rb").read(), name
    with open(os.path.join(reference, "manifest.json")) as f:
        expected = json.load(f)
    assert {k: v for k, v in manifest.items() if k != "prepare"} == {k: v for k, v in expected.items() if k != "prepare"}


# -- 13: non-finite targets ---------------------------------------------------------------------

def _poison(folder, file_number, record, track, value):
    """Put `value` into a target of one record of a train file (bin 5 of `track`)."""
    from enformer_train.data.formats.basenji import BasenjiRecords, write_records

    path = os.path.join(folder, "tfrecords", f"train-{file_number}.tfr")
    records = list(BasenjiRecords(folder, "train").iter_file(path))
    records[record]["target"] = records[record]["target"].copy()
    records[record]["target"][5, track] = value
    write_records(path, records)


def test_prepare_refuses_non_finite_targets_naming_record_and_track_unless_zero(barnyard_copy, tmp_path, capsys):
    import numpy as np

    from enformer_train.cli import main
    from enformer_train.data.store import Store

    folder = os.path.join(barnyard_copy, "human")
    _poison(folder, 1, 3, 2, np.nan)
    _poison(folder, 1, 4, 2, np.inf)
    root = barnyard_copy
    args = ["prepare", "--organism", "human", "--fasta", os.path.join(root, "human.fa"), "--basenji", folder,
            "--context", str(TINY_SEQUENCE_LENGTH), "--records-per-file", "64", "--workers", "0", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "train-1.tfr: record 3 (counting from 0; BED line" in err
    assert "non-finite targets (NaN or inf) in track 2 (1 values)" in err and "--nonfinite-targets zero" in err

    assert main([*args, "--out", str(tmp_path / "s"), "--nonfinite-targets", "zero"]) == 0
    out = capsys.readouterr().out
    assert "train: 2 non-finite targets stored as 0, in tracks 2 (2)" in out
    with open(tmp_path / "s" / "manifest.json") as f:
        assert json.load(f)["splits"]["train"]["nonfinite_targets_zeroed"] == {"2": 2}
    store = Store(str(tmp_path / "s"), "train")
    assert store[64 + 3]["target"][5, 2] == 0 and store[64 + 4]["target"][5, 2] == 0
    assert np.isfinite(np.stack([store[i]["target"] for i in range(len(store))])).all()


def test_evaluation_reports_non_finite_values_instead_of_averaging_over_fewer_tracks():
    import torch

    from enformer_train.train.metrics import TrackStats

    g = torch.Generator().manual_seed(0)
    pred, target = torch.rand(4, 8, 3, generator=g) + 0.1, torch.rand(4, 8, 3, generator=g)
    target[2, 3, 1] = float("nan")
    stats = TrackStats(3, torch.device("cpu"))
    stats.update(pred, target)
    summary = stats.summary()
    assert summary["nonfinite_targets"] == 1 and summary["nonfinite_predictions"] == 0
    assert summary["pearson_r"] != summary["pearson_r"]  # NaN, not the mean of tracks 0 and 2
    assert stats.nonfinite() == {"predictions": {}, "targets": {1: 1}}


@pytest.mark.slow
def test_evaluate_command_names_the_non_finite_targets_it_meets(tmp_path, capsys):
    import shutil

    import numpy as np

    from enformer_train.cli import main
    from train_helpers import overrides

    store = tmp_path / "human"
    shutil.copytree(store_dir("human"), store)
    targets = np.memmap(store / "valid.target.f16", dtype="<f2", mode="r+")
    targets[16 * 8 * 2 + 3] = np.inf  # sample 2, bin 0, track 3
    targets.flush()
    del targets
    args = [a if not a.startswith("data.stores.human=") else f"data.stores.human={store}"
            for a in overrides(tmp_path / "run", 1, 4)]
    assert main(["train", *args]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run"), "--split", "valid", "--out", str(tmp_path / "ev"),
                 "--device", "cpu"]) == 1
    # progress lines aside (stderr is not a terminal here), the error is one line, the last
    lines = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("evaluate ")]
    assert len(lines) == 1 and f"{store} valid: 1 non-finite targets in tracks 3 (1)" in lines[0]
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["organisms"]["human"]["nonfinite_targets"] == 1
