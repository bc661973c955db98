"""Runs that meet faults (issue 14): a second run on the same folder, a frozen rank, a restart's
log, non-finite steps, a dead launcher; and the loss where the prediction underflows."""
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest_data import store_dir
from enformer_train.data.store import Store
from enformer_train.saved.checkpoint import list_checkpoints, load_checkpoint
from enformer_train.train.metrics_log import read_metrics
from enformer_train.train.loss import poisson_loss, poisson_terms
from train_helpers import alive, command, env, overrides, rank_of, run


def test_poisson_loss_is_finite_where_the_prediction_underflows_to_zero():
    # softplus of a large negative float32 is exactly 0; with a zero target, log(0) gave 0 x -inf = NaN
    pred = torch.nn.functional.softplus(torch.tensor([[-200.0, 0.0]]))
    assert pred[0, 0].item() == 0.0
    target = torch.tensor([[0.0, 2.0]])
    loss = poisson_loss(pred, target)
    assert math.isfinite(loss.item())
    # Keras' poisson: pred - target * log(pred + 1e-7)
    expected = (0.0 - 0.0) + (math.log(2) - 2.0 * math.log(math.log(2) + 1e-7))
    assert abs(loss.item() - expected / 2) < 1e-6
    # and a zero prediction where the target is not zero is large, not infinite
    assert math.isfinite(poisson_terms(torch.zeros(1), torch.ones(1)).item())
    # and the gradient through softplus is finite too, so the step is not skipped
    x = torch.tensor([-200.0, 0.5], requires_grad=True)
    poisson_loss(torch.nn.functional.softplus(x), torch.tensor([0.0, 1.0])).backward()
    assert torch.isfinite(x.grad).all()


# -- runs in real processes ---------------------------------------------------------------------

WALL_CLOCK = ("samples_per_s", "tflops_per_s", "mfu")


def _wait_for(condition, what: str, timeout: float = 300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _logged_steps(run_dir) -> list[int]:
    return [m["step"] for m in read_metrics(run_dir) if "loss/human" in m]


def _strict_json_lines(path) -> list[dict]:
    def refuse(name):
        raise ValueError(f"{path}: {name} is not standard JSON")

    return [json.loads(line, parse_constant=refuse) for line in open(path).read().splitlines()]


@pytest.mark.slow
def test_a_second_run_on_the_same_folder_exits_at_once_and_a_resume_after_a_crash_takes_it(tmp_path):
    folder = tmp_path / "run"
    args = overrides(folder, 10_000, 2, "train.checkpoint_every=1")
    first = subprocess.Popen(command(1, args), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: len(_logged_steps(folder)) >= 1, "the first run's first step")
        second = run(1, overrides(folder, 2, 2), check=False)
        assert second.returncode == 2, second.stderr[-3000:]
        line = second.stderr.strip()
        assert "\n" not in line and line.startswith("enformer-train train: error:"), line
        assert str(folder) in line and f"pid {first.pid}" in line and "host " in line and "started " in line, line
        assert first.poll() is None  # the first run goes on
        _wait_for(lambda: len(list_checkpoints(folder)) >= 2, "the first run's checkpoints")
        first.kill()  # a crash: the lock dies with its process
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=60)
    # the second run wrote nothing: every step of the first is logged once, in order
    steps = _logged_steps(folder)
    assert steps == list(range(1, len(steps) + 1))
    last = load_checkpoint(folder)["step"]
    run(1, ["--resume"] + overrides(folder, last + 1, 2, "train.checkpoint_every=1"))
    assert load_checkpoint(folder)["step"] == last + 1


@pytest.mark.slow
def test_a_stopped_and_resumed_run_logs_the_uninterrupted_runs_lines(tmp_path):
    # A run stopped after its checkpoint at step 4, inside the logging window of steps 4-6, having
    # logged lines after it (as a killed run does). Made deterministic (a signal races a tiny run's
    # steps) by cutting the uninterrupted run's folder back to that checkpoint: the same bytes a run
    # stopped there would hold, and its later lines stay in metrics.jsonl to be dropped.
    args = lambda folder: overrides(folder, 6, 2, "train.log_every=3", "train.checkpoint_every=4",
                                    "train.keep_checkpoints=5", dropout=True)
    run(1, args(tmp_path / "full"))
    part = tmp_path / "part"
    shutil.copytree(tmp_path / "full", part)
    for path in list_checkpoints(part):
        if load_checkpoint(path)["step"] > 4:
            path.unlink()
    (part / "model.safetensors").unlink()
    assert load_checkpoint(part)["step"] == 4 and max(m["step"] for m in read_metrics(part)) == 6
    run(1, ["--resume"] + args(part))
    strip = lambda ms: [{k: v for k, v in m.items() if k not in WALL_CLOCK} for m in ms]
    full, resumed = strip(read_metrics(tmp_path / "full")), strip(read_metrics(part))
    assert resumed == full
    assert [m["step"] for m in full if "loss/human" in m] == [3, 6]
    assert full[-1] == {"step": 6, "end": "finished", "nonfinite_skipped": 0}


def _store_with_nan_targets(tmp_path) -> str:
    out = tmp_path / "human"
    shutil.copytree(store_dir("human"), out)
    target = out / os.path.basename(Store(str(out), "train")._files["target"])
    target.write_bytes(np.full(target.stat().st_size // 2, np.nan, dtype=np.float16).tobytes())
    return str(out)


@pytest.mark.slow
def test_skipped_steps_are_counted_at_the_end_and_metrics_stay_standard_json(tmp_path):
    human = _store_with_nan_targets(tmp_path)
    proc = run(1, overrides(tmp_path / "run", 2, 2, f"data.stores.human={human}"))
    lines = _strict_json_lines(tmp_path / "run" / "metrics.jsonl")
    losses = [m for m in lines if "loss/human" in m]
    assert [m["loss/human"] for m in losses] == [None, None]
    assert all(isinstance(m["loss/mouse"], float) for m in losses)
    assert "step 2: finished; 2 updates skipped for a non-finite loss or gradient" in proc.stdout
    assert lines[-1] == {"step": 2, "end": "finished", "nonfinite_skipped": 2}


@pytest.mark.slow
@pytest.mark.distributed
def test_workers_stop_at_once_when_torchrun_is_killed_and_save_nothing(tmp_path):
    folder = tmp_path / "run"
    args = overrides(folder, 10_000, 2, "train.checkpoint_every=10000")
    launcher = subprocess.Popen(command(2, args), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    workers = []
    try:
        _wait_for(lambda: len(_logged_steps(folder)) >= 1, "the first step")
        workers = [int(p) for p in subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True,
                                                  text=True).stdout.split()]
        assert len(workers) == 2
        launcher.kill()
        launcher.wait(timeout=60)
        deadline = time.time() + 20
        while time.time() < deadline and any(alive(p) for p in workers):
            time.sleep(0.2)
        assert not any(alive(p) for p in workers), "the workers outlived their launcher"
        assert list_checkpoints(folder) == []
    finally:
        for pid in [launcher.pid, *workers]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("fault", ["SIGSTOP", "SIGKILL"])
def test_a_frozen_or_killed_rank_ends_the_job_with_one_line_naming_it(tmp_path, fault):
    # Frozen: rank 0 waits out train.collective_timeout_s (on the batch-norm page, or in the watchdog
    # elsewhere). Killed: it learns at once, in a wait on the page (which looks at its peers'
    # processes) or in gloo (connection reset or closed), long before the timeout.
    folder = tmp_path / "run"
    timeout = 30 if fault == "SIGSTOP" else 120
    args = overrides(folder, 10_000, 2, "train.checkpoint_every=10000", f"train.collective_timeout_s={timeout}")
    pages = {n for n in os.listdir("/dev/shm") if n.startswith("enformer-train-")} if os.path.isdir("/dev/shm") else set()
    launcher = subprocess.Popen(command(2, args), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
    workers = []
    try:
        _wait_for(lambda: len(_logged_steps(folder)) >= 1, "the first step")
        workers = [int(p) for p in subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True,
                                                  text=True).stdout.split()]
        victim = next(p for p in workers if rank_of(p) == 1)
        os.kill(victim, getattr(signal, fault))
        at = time.time()
        _, err = launcher.communicate(timeout=240)  # torchrun: the live rank's exit, then its grace period
        assert launcher.returncode != 0
        lines = [line for line in err.splitlines() if line.startswith("enformer-train train: error:")]
        assert len(lines) == 1 and "[rank0]: Traceback" not in err, err[-5000:]
        assert lines[0].startswith("enformer-train train: error: rank 0: the ") and " at step " in lines[0], lines[0]
        if fault == "SIGSTOP":
            assert "(train.collective_timeout_s)" in lines[0] and "rank 1 did not arrive" in lines[0], lines[0]
            assert time.time() - at > 30
        else:
            assert f"rank 1 (pid {victim}) died" in lines[0], lines[0]
            assert time.time() - at < 60
        assert list_checkpoints(folder) == []
        if os.path.isdir("/dev/shm"):
            assert {n for n in os.listdir("/dev/shm") if n.startswith("enformer-train-")} == pages
    finally:
        for pid in [launcher.pid, *workers]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.distributed
def test_a_frozen_rank_ends_evaluate_with_one_line_naming_it(tmp_path):
    run(1, overrides(tmp_path / "run", 1, 2))
    launcher = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "enformer_train",
         "evaluate", "--checkpoint", str(tmp_path / "run"), "--split", "valid", "--out", str(tmp_path / "eval"),
         "--device", "cpu", "--collective-timeout-s", "30"],
        env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    workers = []
    try:
        def spawned():
            workers[:] = [int(p) for p in subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True,
                                                         text=True).stdout.split()]
            return len(workers) == 2
        _wait_for(spawned, "the workers", timeout=120)
        os.kill(next(p for p in workers if rank_of(p) == 1), signal.SIGSTOP)  # before it joins the others
        _, err = launcher.communicate(timeout=240)
        assert launcher.returncode != 0
        lines = [line for line in err.splitlines() if "--collective-timeout-s" in line]
        assert len(lines) == 1, err[-5000:]
        assert lines[0].startswith("enformer-train evaluate: error: rank 0: the process group's rendezvous"), lines[0]
        assert "rank 1 did not arrive" in lines[0]
        assert not (tmp_path / "eval" / "summary.json").exists()
    finally:
        for pid in [launcher.pid, *workers]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
