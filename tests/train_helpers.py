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


def threads_of_one_in(nproc: int) -> dict:
    """Environment for a one-process run that uses as many intra-op threads as each process of an
    `nproc`-process run (distributed/world.py gives each cpu_count // nproc). A 1-rank vs n-rank
    comparison needs it: with other thread counts, CPU kernels split their reductions differently
    (seen on torch 2.4: ~1e-7 apart), and Adam's first steps turn round-off in near-zero gradients
    into steps of nearly the learning rate (q, k and v get their first gradient at step 2, the
    attention output layer being zero-initialised: an update of about 0.74 lr x sign(g))."""
    return {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc))}


def run(nproc: int, args: list[str], check: bool = True, extra_env: dict | None = None,
        **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(command(nproc, args), env={**env(), **(extra_env or {})}, capture_output=True, text=True,
                          timeout=600, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"train exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie has died: its parent has not reaped it yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def rank_of(pid: int) -> int:
    """The torchrun rank of worker process `pid` (its RANK)."""
    with open(f"/proc/{pid}/environ", "rb") as f:
        values = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
    return int(values[b"RANK"])
