"""Files that survive faults (issue 14, points 5-11): atomic writes flushed to disk, checkpoints
with a checksum, rotation that keeps the newest good one, one-line errors for foreign configs and
full disks, stale temporary files removed, modes that follow the umask. Faults are injected by
monkeypatching (os.fsync, shutil.disk_usage, os.write)."""
import errno
import os
import stat

import pytest
import torch

from enformer_train import build_model, files
from enformer_train.errors import UserError
from enformer_train.model.weights import save_model
from enformer_train.saved.checkpoint import list_checkpoints, load_checkpoint, rng_state, save_checkpoint
from model_helpers import tiny_config


def _state(step, **extra):
    return {"step": step, "model": {"w": torch.full((3,), float(step))}, "optimizer": {}, "loaders": {},
            "rng": [rng_state(torch.device("cpu"))], "config": {"train": {"steps": 10}}, **extra}


# -- 5: atomic_write flushes the file and its folder, before and after the rename -----------------

def test_atomic_write_fsyncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(a, b):
        events.append(("replace", str(b)))
        real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "out.bin"
    files.atomic_write(target, lambda tmp: open(tmp, "wb").write(b"abc"))
    assert target.read_bytes() == b"abc"
    at = events.index(("replace", str(target)))
    before, after = [p for _, p in events[:at]], [p for _, p in events[at + 1:]]
    assert any(p.startswith(str(tmp_path / ".out.bin.")) and p.endswith(".tmp") for p in before)  # the file
    assert str(tmp_path) in before and str(tmp_path) in after  # the folder, both sides of the rename


# -- 11: files follow the user's umask ---------------------------------------------------------

@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_checkpoints_and_weights_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        path = save_checkpoint(tmp_path / f"run{mask}", _state(1), keep=2)
        weights = tmp_path / f"model{mask}.safetensors"
        save_model(build_model(tiny_config()), weights)
        files.write_json(tmp_path / f"x{mask}.json", {"a": 1})
    finally:
        os.umask(old)
    for p in (path, weights, tmp_path / f"x{mask}.json"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask, p
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o777 & ~mask


# -- the trainer in this process (so that faults can be monkeypatched in) ------------------------

def _train(capsys, run_dir, steps, *extra, resume=False):
    """`enformer-train train` in this process: (exit status, stderr)."""
    from enformer_train.cli import main
    from train_helpers import overrides

    capsys.readouterr()
    args = ["train", *(["--resume"] if resume else []), *overrides(run_dir, steps, 4, "train.eval_every=1000",
                                                                    "train.checkpoint_every=1", *extra)]
    status = main(args)
    return status, capsys.readouterr().err


def _flip_tensor_bytes(path, count=192):
    """Flip `count` bytes inside the largest tensor's data (the zip stores them uncompressed)."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename and i.filename[-1].isdigit()),
                   key=lambda i: i.file_size)
    assert info.file_size > count
    data = bytearray(path.read_bytes())
    at = info.header_offset  # the local header: its name and extra field lengths at bytes 26-29
    start = at + 30 + int.from_bytes(data[at + 26:at + 28], "little") + int.from_bytes(data[at + 28:at + 30], "little")
    for k in range(count):
        data[start + k] ^= 0xFF
    path.write_bytes(bytes(data))


# -- 6: a checksum verified on every load -------------------------------------------------------

def _resume_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "skipped" in line or "resuming" in line]


@pytest.mark.slow
def test_damaged_checkpoint_is_refused_by_evaluate_and_predict_and_resume_uses_the_one_before(tmp_path, capsys):
    from enformer_train.cli import main

    run_dir = tmp_path / "run"
    status, err = _train(capsys, run_dir, 2)
    assert status == 0, err
    first, latest = list_checkpoints(run_dir)
    _flip_tensor_bytes(latest)
    with pytest.raises(UserError, match="step-00000002.pt: checksum mismatch"):
        load_checkpoint(latest)
    assert main(["evaluate", "--checkpoint", str(latest), "--split", "valid", "--out", str(tmp_path / "ev"),
                 "--max-batches", "1", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "step-00000002.pt: checksum mismatch" in err

    # --resume says in one line what it skipped and why, in one more what it resumed from
    status, err = _train(capsys, run_dir, 3, resume=True)
    assert status == 0, err
    assert _resume_lines(err) == [
        "enformer-train train: skipped step-00000002.pt: checksum mismatch, the file was damaged after it was "
        "written (disk, copy or transfer); resuming from the one before",
        f"enformer-train train: resuming from {first} (step 1)"]
    assert load_checkpoint(run_dir)["step"] == 3
    assert latest.exists()  # skipped, never deleted

    # (the resumed run saved steps 2 and 3 anew) the newest cut to 0 bytes: the same two lines;
    # an undamaged newest: only the line saying where it resumed from
    second, newest = list_checkpoints(run_dir)[-2:]
    assert (second.name, newest.name) == ("step-00000002.pt", "step-00000003.pt")
    before = newest.read_bytes()
    newest.write_bytes(b"")
    status, err = _train(capsys, run_dir, 3, resume=True)
    assert status == 0, err
    assert _resume_lines(err) == [
        "enformer-train train: skipped step-00000003.pt: empty file (0 bytes), a save cut short; resuming from the "
        "one before", f"enformer-train train: resuming from {second} (step 2)"]
    newest.write_bytes(before)
    status, err = _train(capsys, run_dir, 4, resume=True)
    assert status == 0, err
    assert _resume_lines(err) == [f"enformer-train train: resuming from {newest} (step 3)"]

    # a zero-length checkpoint: one line from evaluate and predict alike
    empty = run_dir / "checkpoints" / "step-00000004.pt"
    empty.write_bytes(b"")
    for args in (["evaluate", "--checkpoint", str(run_dir), "--out", str(tmp_path / "ev"), "--device", "cpu"],
                 ["predict", "--checkpoint", str(empty), "--fasta", "x.fa", "--region", "chr1:0-100",
                  "--out", str(tmp_path / "p.npz"), "--device", "cpu"]):
        assert main(args) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "step-00000004.pt: empty file" in err, err


def test_checkpoints_from_before_checksums_still_load(tmp_path):
    path = save_checkpoint(tmp_path, _state(3), keep=2)
    state = torch.load(path, weights_only=True)
    del state["checksum"]
    torch.save(state, path)
    assert load_checkpoint(path)["step"] == 3


# -- 7: rotation deletes only after the new one verifies, never the newest good one --------------

def test_rotation_keeps_the_newest_good_checkpoint_and_deletes_nothing_for_a_bad_save(tmp_path, monkeypatch):
    from enformer_train.saved import checkpoint

    save_checkpoint(tmp_path, _state(1), keep=1)
    save_checkpoint(tmp_path, _state(2, nonfinite_run=5), keep=1)  # a stop for non-finite losses
    save_checkpoint(tmp_path, _state(3, nonfinite_run=10), keep=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000001.pt", "step-00000003.pt"]
    save_checkpoint(tmp_path, _state(4), keep=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000004.pt"]

    real_save = torch.save
    monkeypatch.setattr(checkpoint.torch, "save", lambda obj, f: (real_save(obj, f), open(f, "r+b").truncate(100)))
    with pytest.raises(checkpoint.CheckpointNotSaved, match="step-00000005.pt"):
        save_checkpoint(tmp_path, _state(5), keep=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000004.pt"]


# -- 8: a checkpoint of another model config -----------------------------------------------------

def test_resume_with_another_model_config_names_the_keys(tmp_path, capsys):
    status, err = _train(capsys, tmp_path / "run", 1)
    assert status == 0, err
    status, err = _train(capsys, tmp_path / "run", 2, "model.channels=48", resume=True)
    assert status == 1
    assert err.count("\n") == 1 and "model.channels: checkpoint 32, run 48" in err, err


# -- 9: stale temporary files of saves cut short ------------------------------------------------

@pytest.mark.slow
def test_stale_temporaries_are_removed_at_start_and_nothing_else(tmp_path, capsys):
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    stale = folder / ".step-00000004.pt.k2x_9abc.tmp"
    stale.write_bytes(b"x" * 1000)
    others = [folder / "notes.tmp", folder / ".step-00000004.pt.tmp", folder / "step-x.pt.abcdefgh.tmp"]
    for p in others:
        p.write_text("mine")
    status, err = _train(capsys, tmp_path / "run", 1)
    assert status == 0, err
    assert not stale.exists() and all(p.read_text() == "mine" for p in others)
    assert "removed 1 temporary files" in err


# -- 10: a full disk ------------------------------------------------------------------------------

def _full_disk(monkeypatch, full_calls):
    """shutil.disk_usage as the checkpoints see it: 1,000 bytes free on the calls in `full_calls`."""
    import shutil

    from enformer_train.saved import checkpoint

    real, calls = shutil.disk_usage, []

    def disk_usage(path):
        calls.append(path)
        usage = real(path)
        return usage._replace(free=1000) if len(calls) in full_calls else usage

    monkeypatch.setattr(checkpoint.shutil, "disk_usage", disk_usage)


def test_full_disk_skips_checkpoints_with_one_line_and_retries(tmp_path, capsys, monkeypatch):
    _full_disk(monkeypatch, {1, 2})  # the checkpoints of steps 1 and 2 do not fit, step 3's does
    status, err = _train(capsys, tmp_path / "run", 3)
    assert status == 0, err
    lines = [line for line in err.splitlines() if "checkpoint not saved" in line]
    assert len(lines) == 2 and "step 1:" in lines[0] and "(2 in a row)" in lines[1]
    assert f"{tmp_path / 'run' / 'checkpoints'}: no room for checkpoint step-00000002.pt: needs about" in lines[1]
    assert "1000 free" in lines[1]
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-00000003.pt"]
    assert (tmp_path / "run" / "model.safetensors").exists()


@pytest.mark.slow
def test_three_failed_saves_in_a_row_stop_with_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    status, err = _train(capsys, tmp_path / "run", 1)
    assert status == 0, err
    good = (tmp_path / "run" / "checkpoints" / "step-00000001.pt").read_bytes()
    _full_disk(monkeypatch, set(range(1, 100)))
    status, err = _train(capsys, tmp_path / "run", 10, resume=True)
    assert status == 1
    assert "3 checkpoints in a row could not be saved; stopped at step 4" in err.splitlines()[-1]
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-00000001.pt"]
    assert (tmp_path / "run" / "checkpoints" / "step-00000001.pt").read_bytes() == good


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["SIGTERM", "non-finite"])
def test_a_stop_with_a_full_disk_and_no_checkpoint_yet_says_nothing_could_be_saved(tmp_path, capsys, monkeypatch,
                                                                                    stop):
    import signal

    from enformer_train.train import trainer

    _full_disk(monkeypatch, set(range(1, 100)))  # from the start: no checkpoint was ever written
    if stop == "SIGTERM":  # arrives during step 1, before the first checkpoint (step 100)
        real_step = trainer.Trainer.train_step
        monkeypatch.setattr(trainer.Trainer, "train_step",
                            lambda self, batches: (os.kill(os.getpid(), signal.SIGTERM), real_step(self, batches))[1])
    else:
        monkeypatch.setattr(trainer, "poisson_loss", lambda pred, target: pred.sum() * float("nan"))
    status, err = _train(capsys, tmp_path / "run", 10, "train.checkpoint_every=100", "train.max_nonfinite=2")
    assert status == 1
    why = "stopped by SIGTERM at step 1" if stop == "SIGTERM" else "stopped for non-finite steps at step 2"
    assert [line for line in err.splitlines() if line.startswith("enformer-train")] == [  # (the rest: progress)
        f"enformer-train train: error: {why}: no checkpoint could be saved ({tmp_path / 'run' / 'checkpoints'}: no "
        f"room for checkpoint step-0000000{why[-1]}.pt: needs about " + err.split("needs about ")[1].split(")")[0] +
        ") and none was saved before, so there is nothing to resume from; free space and start the run again"]
    assert "1000 free" in err
    assert list_checkpoints(tmp_path / "run") == []


def test_no_space_for_metrics_is_one_line_and_a_torn_last_line_is_dropped_on_resume(tmp_path, capsys, monkeypatch):
    import json

    from enformer_train.train.metrics_log import MetricsLog, read_metrics

    log = MetricsLog(tmp_path, True, None, tensorboard=False)
    log.log(1, {"loss": 1.0})
    real_write = os.write

    def write(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("metrics.jsonl"):
            real_write(fd, data[:7])  # half a line, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    capsys.readouterr()
    log.log(2, {"loss": 2.0})
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "metrics.jsonl: record not logged (No space left on device)" in err
    monkeypatch.undo()
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 1.0}]  # the half line was taken back

    # a torn last line (the disk filled mid-line in an older version, a power cut) does not block resume
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 2, "loss": 2.0}) + "\n" + '{"step": 3, "lo')
    MetricsLog(tmp_path, True, 3, tensorboard=False)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "metrics.jsonl: dropped its last line, cut short" in err
    assert [m["step"] for m in read_metrics(tmp_path)] == [1, 2]
