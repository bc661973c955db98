"""Running `enformer-train train` for tests: a tiny model on the tiny barnyard's stores, as one
process or under torchrun with gloo, in real subprocesses."""
from __future__ import annotations

import os
import subprocess
import sys

from conftest_data import store_dir

TINY_MODEL = ["model.channels=32", "model.num_transformer_layers=1", "model.num_heads=2", "model.key_size=8",
              "model.num_relative_position_features=12", "model.tower_divisible_by=8",
              "model.sequence_length=6144", "model.target_length=16", "model.heads={human: 8, mouse: 6}"]


def overrides(run_dir, steps: int, batch: int = 4, *extra: str, dropout: bool = False) -> list[str]:
    values = [f"data.stores.human={store_dir('human')}", f"data.stores.mouse={store_dir('mouse')}",
              "data.num_workers=0", *TINY_MODEL,
              f"train.steps={steps}", f"train.batch_size={batch}", "train.warmup_steps=2", "train.log_every=1",
              f"train.eval_every={steps}", "train.eval_batches=2", "train.checkpoint_every=100",
              f"train.run_dir={run_dir}", "train.learning_rate=0.001", "train.tensorboard=false"]
    if not dropout:
        values += ["model.dropout_rate=0", "model.attention_dropout_rate=0", "model.positional_dropout_rate=0",
                   "model.final_dropout_rate=0"]
    return values + list(extra)


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([os.path.dirname(__file__), e.get("PYTHONPATH", "")])
    e.pop("RANK", None), e.pop("WORLD_SIZE", None)
    return e


def command(nproc: int, args: list[str], torchrun_args: tuple[str, ...] = ()) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "enformer_train", "train", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
            *torchrun_args, "-m", "enformer_train", "train", *args]


def run(nproc: int, args: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(command(nproc, args), env=env(), capture_output=True, text=True, timeout=600, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"train exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc
