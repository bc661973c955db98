"""The trainer with real processes over gloo: equivalence across ranks, exact resume, signals,
restarts, non-finite updates."""
import math
import os
import signal
import subprocess
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest_data import store_dir
from enformer_train.data.loader import Loader
from enformer_train.data.store import Store
from enformer_train.saved.checkpoint import list_checkpoints, load_checkpoint
from enformer_train.train.metrics_log import read_metrics
from train_helpers import command, env, overrides, run, threads_of_one_in


def _losses(run_dir):
    return [(m["step"], m["loss/human"], m["loss/mouse"]) for m in read_metrics(run_dir) if "loss/human" in m]


# The 2-rank = 1-rank comparisons train in float64 (train.precision=fp64). In float32 they agreed
# on one CPU and not on another (torch 2.4.1: a step-3 loss 3.7e-5 apart): the conv biases just
# before a training-mode batch norm (every conv bias of the stem and tower) and the last transformer
# block's output bias (the residual stream goes on to the final batch norm) have a gradient of
# exactly zero, so what they get is round-off, 1e-10 to 1e-9 in float32, and Adam divides it by its
# own size plus eps=1e-8: steps of 0.1-1.4 x lr whose values depend on the order of every sum. The
# batch norms cancel them in exact arithmetic but not in float32 round-off, so they moved the
# other weights' steps by 1e-1 relative at step 2 (with those biases frozen: 6e-5). In float64 the
# round-off is 1e-18 against the same eps (steps of 1e-9 x lr at most). Measured on torch 2.13 and
# 2.4.1, native, AVX2 and ATen's default kernels: losses within 2e-15 relative, weights within
# 5e-12 (those biases' noise steps). The bounds leave a factor of 200 to that and are 1e5 times
# smaller than a step (lr 5e-4 to 1e-3), which a wrong sum of the two ranks changes.
EXACT = {"rtol": 1e-10, "atol": 1e-9}


def _assert_same_weights(a_dir, b_dir):
    a, b = load_file(a_dir / "model.safetensors"), load_file(b_dir / "model.safetensors")
    assert set(a) == set(b) and a["stem.conv.weight"].dtype == torch.float64
    for name in a:
        torch.testing.assert_close(b[name], a[name], **EXACT, msg=name)


@pytest.mark.slow
@pytest.mark.distributed
def test_two_ranks_with_batch_b_equal_one_rank_with_batch_2b(tmp_path):
    run(1, overrides(tmp_path / "one", 4, 4, "train.precision=fp64"), extra_env=threads_of_one_in(2))
    run(2, overrides(tmp_path / "two", 4, 4, "train.precision=fp64"))  # global batch 4 = 2 per rank
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert [s for s, *_ in one] == [1, 2, 3, 4]
    np.testing.assert_allclose(np.array(two)[:, 1:], np.array(one)[:, 1:], rtol=EXACT["rtol"])
    _assert_same_weights(tmp_path / "one", tmp_path / "two")  # every tensor, the moving averages too
    # the weights did move: a step is not a no-op
    start = load_file(tmp_path / "one" / "model.safetensors")["transformer.0.attention.output.weight"]
    assert start.abs().max() > 0  # zero-initialised, so non-zero only after updates
    valid = [m for m in read_metrics(tmp_path / "two") if "valid/human/pearson_r" in m]
    assert valid and valid[-1]["step"] == 4
    one_valid = [m for m in read_metrics(tmp_path / "one") if "valid/human/pearson_r" in m]
    assert valid[-1]["valid/human/pearson_r"] == pytest.approx(one_valid[-1]["valid/human/pearson_r"], rel=1e-9)


@pytest.mark.slow
def test_stopped_and_resumed_run_equals_the_uninterrupted_run(tmp_path):
    run(1, overrides(tmp_path / "full", 6, 4, "train.checkpoint_every=3", "train.eval_every=3", dropout=True))
    run(1, overrides(tmp_path / "part", 3, 4, "train.checkpoint_every=3", "train.eval_every=3", dropout=True))
    assert [p.name for p in list_checkpoints(tmp_path / "part")] == ["step-00000003.pt"]
    run(1, ["--resume"] + overrides(tmp_path / "part", 6, 4, "train.checkpoint_every=3", "train.eval_every=3",
                                    dropout=True))
    assert _losses(tmp_path / "part") == _losses(tmp_path / "full")
    full, part = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "part")
    strip = lambda ms: [{k: v for k, v in m.items() if k not in ("samples_per_s", "tflops_per_s")} for m in ms]
    assert strip(part) == strip(full)
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "part" / "model.safetensors")
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.slow
def test_sigterm_leaves_a_loadable_checkpoint(tmp_path):
    args = overrides(tmp_path / "run", 10_000, 4)
    proc = subprocess.Popen(command(1, args), env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err and "--resume" in err
    state = load_checkpoint(tmp_path / "run")
    assert state["step"] >= 2
    assert state["step"] == read_metrics(tmp_path / "run")[-1]["step"]


@pytest.mark.slow
@pytest.mark.distributed
def test_killed_worker_is_restarted_and_the_run_finishes(tmp_path):
    args = overrides(tmp_path / "run", 8, 4, "train.checkpoint_every=2")
    proc = subprocess.Popen(command(2, args, ("--max-restarts", "1")), env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list_checkpoints(tmp_path / "run"):
        time.sleep(0.5)
    assert list_checkpoints(tmp_path / "run"), "no checkpoint appeared"
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2
    os.kill(int(workers[1]), signal.SIGKILL)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-20000:]
    assert load_checkpoint(tmp_path / "run")["step"] == 8
    steps = [s for s, *_ in _losses(tmp_path / "run")]
    assert steps == sorted(set(steps)) and steps[-1] == 8  # resumed: no step logged twice


def _batches_with(store_path, index, steps, batch):
    loader = Loader(Store(store_path, "train"), batch, train=True, seed=42, sequence_length=6144)
    hits = 0
    for step, b in zip(range(steps), loader):
        hits += int(index in b["index"].tolist())
    return hits


def _poisoned_store(tmp_path, index):
    import shutil

    out = tmp_path / "human"
    shutil.copytree(store_dir("human"), out)
    store = Store(str(out), "train")
    row = store.target_length * store.num_targets * 2
    with open(out / os.path.basename(store._files["target"]), "r+b") as f:
        f.seek(index * row)
        f.write(np.full(store.target_length * store.num_targets, np.nan, dtype=np.float16).tobytes())
    return str(out)


@pytest.mark.slow
def test_nan_in_a_batch_is_skipped_and_logged(tmp_path):
    human = _poisoned_store(tmp_path, 5)
    steps = 40
    expected = _batches_with(human, 5, steps, 4)
    assert expected >= 1
    run(1, overrides(tmp_path / "run", steps, 4, f"data.stores.human={human}"))
    last = [m for m in read_metrics(tmp_path / "run") if "nonfinite_skipped" in m][-1]
    assert last["nonfinite_skipped"] == expected
    assert all(math.isfinite(m["loss/mouse"]) for m in read_metrics(tmp_path / "run") if "loss/mouse" in m)
    # and a run whose data is all bad stops with a message and a checkpoint
    proc = run(1, overrides(tmp_path / "bad", 3, 256, f"data.stores.human={human}", "train.max_nonfinite=2"),
               check=False)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]  # above it only the progress bar
    assert last.startswith("enformer-train train: error:") and "non-finite" in last and "step-00000002.pt" in last
    assert load_checkpoint(tmp_path / "bad")["step"] == 2


def test_bad_config_is_one_line(tmp_path):
    proc = run(1, overrides(tmp_path / "run", 2, 4, "train.schedule=linear"), check=False)
    assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0
    assert proc.stderr.startswith("enformer-train train: error:") and "train.schedule" in proc.stderr


@pytest.mark.slow
@pytest.mark.distributed
def test_summed_update_on_two_ranks_equals_one_rank(tmp_path):
    run(1, overrides(tmp_path / "one", 3, 4, "train.update=sum", "train.precision=fp64"),
        extra_env=threads_of_one_in(2))
    run(2, overrides(tmp_path / "two", 3, 4, "train.update=sum", "train.precision=fp64"))
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    np.testing.assert_allclose(np.array(two)[:, 1:], np.array(one)[:, 1:], rtol=EXACT["rtol"])
    _assert_same_weights(tmp_path / "one", tmp_path / "two")
    # one update a step: a single gradient norm is logged, not one per organism
    metrics = [m for m in read_metrics(tmp_path / "one") if "loss/human" in m]
    assert all("grad_norm" in m and "grad_norm/human" not in m for m in metrics)
    # alternating: the mouse batch of step 1 already sees the human update; summed: it does not
    run(1, overrides(tmp_path / "alt", 3, 4, "train.precision=fp64"), extra_env=threads_of_one_in(2))
    alt = _losses(tmp_path / "alt")
    assert alt[0][1] == one[0][1] and alt[0][2] != one[0][2]


@pytest.mark.parametrize("name", ["enformer.yaml", "tiny.yaml"])
def test_shipped_configs_load(name):
    from pathlib import Path

    from enformer_train.config import load_config

    path = Path(__file__).parents[1] / "configs" / name  # the top-level link to the packaged configs
    config = load_config(str(path), ["data.stores.human=h", "data.stores.mouse=m"])
    if name == "enformer.yaml":  # the paper's recipe
        t = config.train
        assert (t.learning_rate, t.warmup_steps, t.batch_size, t.steps, t.clip_grad_norm) == (5e-4, 5000, 64, 150_000, 0.2)
        assert config.model.heads == {"human": 5313, "mouse": 1643} and config.data.max_shift == 3
    else:
        assert config.train.schedule == "cosine" and config.model.channels == 64


def test_init_head_bias_starts_each_track_at_its_mean_and_a_resume_keeps_the_trained_bias(tmp_path):
    from enformer_train.config import load_config
    from enformer_train.train.trainer import Trainer

    def trainer(steps, *extra, resume=False):
        return Trainer(load_config(None, overrides(tmp_path / "run", steps, 4, *extra)), resume=resume)

    first = trainer(2, "train.init_head_bias=true", "train.checkpoint_every=2")
    try:
        for organism in ("human", "mouse"):
            store = Store(store_dir(organism), "train")  # fewer than 512 samples: the mean is over all
            mean = np.mean([store.read_target(i).astype(np.float64).mean(axis=0) for i in range(len(store))], axis=0)
            bias = first.model.heads[organism].linear.bias.detach().double()
            np.testing.assert_allclose(torch.nn.functional.softplus(bias).numpy(), np.maximum(mean, 1e-3), rtol=1e-5)
            assert mean.min() < 0.9 * mean.max()  # the tracks' levels differ: a common value would not pass
        first.fit()
        trained = {o: h.linear.bias.detach().clone() for o, h in first.model.heads.items()}
    finally:
        first.close()
    resumed = trainer(4, "train.init_head_bias=true", "train.checkpoint_every=2", resume=True)
    try:
        assert resumed.step == 2
        for organism, bias in trained.items():  # from the checkpoint, not set again from the targets
            assert torch.equal(resumed.model.heads[organism].linear.bias.detach(), bias)
    finally:
        resumed.close()
    plain = Trainer(load_config(None, overrides(tmp_path / "plain", 1, 4)))
    try:
        assert all(torch.count_nonzero(h.linear.bias) == 0 for h in plain.model.heads.values())  # off by default
    finally:
        plain.close()


def test_learning_rate_multipliers_scale_each_modules_first_adam_step(tmp_path):
    from enformer_train.config import load_config
    from enformer_train.errors import UserError
    from enformer_train.train.trainer import Trainer

    # Adam's first update moves every parameter with a gradient by exactly its learning rate, so the
    # step each module took is its rate: 1e-3 x its factor (the longest path that holds it wins).
    trainer = Trainer(load_config(None, overrides(
        tmp_path / "run", 1, 4, "train.warmup_steps=0", "train.update=joint", "train.clip_grad_norm=0",
        "train.checkpoint_every=1",
        "train.learning_rate_multipliers={transformer: 0.1, transformer.0.mlp_linear1: 3, heads.mouse: 0.5}")))
    try:
        before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        trainer.fit()
        steps = {n: (p.detach() - before[n]).abs() for n, p in trainer.model.named_parameters()}
    finally:
        trainer.close()

    def moved(name):
        step = steps[name]
        return step[step > 0].median().item()

    for name, rate in [("stem.conv.weight", 1e-3), ("conv_tower.0.conv.conv.weight", 1e-3),
                       ("transformer.0.mlp_linear2.weight", 1e-4), ("transformer.0.mlp_linear1.weight", 3e-3),
                       ("final_pointwise.conv_block.conv.weight", 1e-3), ("heads.human.linear.weight", 1e-3),
                       ("heads.mouse.linear.weight", 5e-4)]:
        assert moved(name) == pytest.approx(rate, rel=1e-3), name
    # A resume takes the config's factors; a config that groups the parameters otherwise is refused.
    trainer = Trainer(load_config(None, overrides(
        tmp_path / "run", 2, 4, "train.update=joint", "train.checkpoint_every=1",
        "train.learning_rate_multipliers={transformer: 0.2, transformer.0.mlp_linear1: 3, heads.mouse: 0.5}")),
        resume=True)
    try:
        assert trainer.step == 1 and [g["lr_scale"] for g in trainer.optimizer.param_groups] == [1.0, 0.2, 3.0, 0.5]
    finally:
        trainer.close()
    with pytest.raises(UserError, match="optimizer state does not fit .*learning_rate_multipliers"):
        Trainer(load_config(None, overrides(tmp_path / "run", 2, 4, "train.update=joint")), resume=True).close()
    with pytest.raises(UserError, match="learning_rate_multipliers.transfomer: .*did you mean transformer"):
        Trainer(load_config(None, overrides(tmp_path / "typo", 1, 4,
                                            "train.learning_rate_multipliers={transfomer: 0.1}"))).close()
    with pytest.raises(UserError, match=r"learning_rate_multipliers.stem=0: must be greater than 0"):
        load_config(None, overrides(tmp_path / "zero", 1, 4, "train.learning_rate_multipliers={stem: 0}"))
