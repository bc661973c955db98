import pytest
import torch

from enformer_train.errors import UserError
from enformer_train.saved.checkpoint import list_checkpoints, load_checkpoint, rng_state, save_checkpoint, set_rng_state


def _state(step):
    return {"step": step, "model": {"w": torch.full((3,), float(step))}, "optimizer": {}, "loaders": {},
            "rng": [rng_state(torch.device("cpu"))], "config": {"train": {"steps": 10}}}


def test_last_k_are_kept_and_the_latest_loads(tmp_path):
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, _state(step), keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000003.pt", "step-00000004.pt"]
    assert not list((tmp_path / "checkpoints").glob(".*tmp"))  # no temporary files left
    state = load_checkpoint(tmp_path)
    assert state["step"] == 4 and torch.equal(state["model"]["w"], torch.full((3,), 4.0))


def test_torn_and_foreign_checkpoints_are_refused(tmp_path):
    path = save_checkpoint(tmp_path, _state(5), keep=3)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="step-00000005.pt: not a readable checkpoint"):
        load_checkpoint(path)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(UserError, match="not an enformer-train checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no checkpoints"):
        load_checkpoint(tmp_path / "empty")  # a run folder with none


def test_rng_state_round_trip():
    import random

    import numpy as np

    state = rng_state(torch.device("cpu"))
    a = (torch.rand(3), random.random(), np.random.rand())
    set_rng_state(state, torch.device("cpu"))
    b = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2]


@pytest.mark.slow
def test_train_refuses_a_folder_holding_a_run_without_resume(tmp_path, capsys):
    from enformer_train.cli import main
    from enformer_train.saved.checkpoint import run_reached
    from train_helpers import overrides

    run_dir = tmp_path / "run"
    args = overrides(run_dir, 2, 4, "train.checkpoint_every=1", "train.keep_checkpoints=1", "train.eval_batches=1")
    assert run_reached(run_dir) is None
    assert main(["train", *args]) == 0
    before = {p.name: p.read_bytes() for p in [run_dir / "metrics.jsonl", run_dir / "model.safetensors",
                                               *(run_dir / "checkpoints").iterdir()]}
    capsys.readouterr()
    assert main(["train", *args[:-1], "train.steps=1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [f"enformer-train train: error: {run_dir}: holds a run to step 2: --resume to "
                                "continue, or another train.run_dir"]
    after = {p.name: p.read_bytes() for p in [run_dir / "metrics.jsonl", run_dir / "model.safetensors",
                                              *(run_dir / "checkpoints").iterdir()]}
    assert after == before  # nothing of the first run was touched
    # a folder with only a model file, or only logged metrics, holds a run too
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.safetensors").write_bytes(b"x")
    assert run_reached(tmp_path / "m") == 0
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "metrics.jsonl").write_text('{"step": 7}\n{"ste')
    assert run_reached(tmp_path / "j") == 7
