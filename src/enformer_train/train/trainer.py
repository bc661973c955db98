"""The training loop, top to bottom: setup, steps, validation, checkpoints, logs.

Each step takes one human and one mouse batch (every organism in data.stores). With
update='alternate' (the official colab), each organism's batch gets its own optimizer update,
touching the trunk and its own head; with update='sum', one update on the summed losses.
"""
from __future__ import annotations

import contextlib
import inspect
import math
import os
import signal
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..compiling import KEEP_FREED_SWITCH, compile_model, keep_freed_memory, require_compile
from ..config import Config
from ..data.augment import Augment
from ..data.loader import Loader, to_device
from ..data.store import Store
from ..distributed import World, all_gather_objects, all_reduce_, barrier, set_where, setup, teardown, watching
from ..errors import Stopped, UserError
from ..model import build_model
from ..model.info import measure
from ..model.weights import save_model
from ..progress import progress
from ..saved import checkpoint as ckpt
from . import finetune
from .loss import poisson_loss
from .metrics_log import MetricsLog
from .optim import learning_rate, make_optimizer
from .run_lock import RunFolderBusy, lock_run_folder, unlock_run_folder
from .validation import cage_tracks, evaluate_store

# bf16 dense peak FLOP/s per device, for model FLOP utilisation; unknown devices log none.
_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12,
               "V100": 125e12}


_MAX_FAILED_SAVES = 3  # checkpoints in a row that may fail (a full disk) before the run stops


class NonFiniteError(UserError):
    pass


class Trainer:
    """One run of training, on this rank: the model (DDP-wrapped when distributed), the optimizer,
    one training loader per organism, the validation stores, the step counter and the logs.

    `fit()` runs steps until `train.steps`; each step is `train_step()` on one batch (times the
    accumulation steps) per organism, then, on their schedules, a log record, a validation, a
    checkpoint. `save()` / `_restore()` are the checkpoint's two sides: together they make a
    resumed run continue exactly as the uninterrupted one would. With `resume` (or when torchrun
    restarts the workers) the run folder's latest checkpoint is loaded.
    """

    def __init__(self, config: Config, resume: bool = False):
        self.config = config
        t = config.train
        if t.compile:
            require_compile("train.compile=true", "set train.compile=false or upgrade torch")
        self.world: World = setup(t.device, t.collective_timeout_s, "train")
        self.run_dir = Path(t.run_dir)
        restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)) > 0
        self._claim_run_folder(fresh=not (resume or restarted))
        self.organisms = list(config.data.stores)
        self.flops_per_sample = measure(config.model)["training_flops"]
        self.model = self._build_model()
        self.batch_per_rank, self.accumulation = self._batch_arithmetic()
        self._open_stores()
        resume_from = self._checkpoint_to_resume(resume, restarted)
        # Fine-tuning: weights first (a resumed run has them in its checkpoint), then what trains.
        self.fine_tuning = finetune.setup(self.model, t, resumed=resume_from is not None)
        if t.init_head_bias and resume_from is None:
            init_head_biases(self.model, self.stores)
        self.optimizer = make_optimizer(self.model, t, note=self._say if self.world.is_main else None)
        self._start_counters()
        if resume_from is not None:
            self._restore(resume_from)
            if self.world.is_main:
                self._say(f"resuming from {resume_from['path']} (step {self.step})")
        self.ddp = self._distributed_model()
        self.forward = self._compiled(self.ddp)
        self.autocast = t.bf16_autocast(self.world.device.type)
        self._prepare_run_folder()
        self.log = MetricsLog(self.run_dir, self.world.is_main, resume_from["step"] if resume_from else None,
                              tensorboard=t.tensorboard, wandb_project=t.wandb_project, config=config.to_dict())
        if self.step == 0:  # a resumed run has the record in metrics.jsonl already
            self.fine_tuning.announce(self.model, self.log, self.step, self.world.is_main)
        self._stop_signal = 0

    # -- building a run -------------------------------------------------------------------------

    def _build_model(self) -> torch.nn.Module:
        """The model, initialised from `seed` alike on every rank (so no weight broadcast is needed);
        afterwards each rank reseeds to its own stream so that dropout masks differ per rank, as on
        separate TPU cores (the +1 keeps rank 0's stream apart from the init's)."""
        t = self.config.train
        torch.manual_seed(t.seed)
        model = build_model(self.config.model).to(self.world.device, t.parameter_dtype)
        torch.manual_seed(t.seed + 1000 * self.world.rank + 1)
        return model

    def _batch_arithmetic(self) -> tuple[int, int]:
        """(samples per rank per micro-batch, micro-batches per update) for train.batch_size."""
        t, ws = self.config.train, self.world.world_size
        per_rank = t.batch_per_rank or t.batch_size // ws
        if per_rank <= 0 or t.batch_size % (per_rank * ws):
            raise UserError(f"train.batch_size {t.batch_size} is not batch_per_rank ({per_rank}) x "
                            f"{ws} ranks x a whole number of accumulation steps")
        return per_rank, t.batch_size // (per_rank * ws)

    def _open_stores(self) -> None:
        """The training and validation stores of every organism, checked against the heads, and a
        training loader for each."""
        config, t = self.config, self.config.train
        self.stores = {o: Store(path, config.data.train_split) for o, path in config.data.stores.items()}
        self.valid = {o: Store(path, config.data.valid_split) for o, path in config.data.stores.items()}
        for o, store in self.stores.items():
            if store.target_length != config.model.target_length or store.num_targets != config.model.heads[o]:
                raise UserError(f"{store.path}: targets [{store.target_length}, {store.num_targets}] but the model's "
                                f"{o} head gives [{config.model.target_length}, {config.model.heads[o]}]")
        augment = Augment(config.data.max_shift, 0.5 if config.data.reverse_complement else 0.0)
        self.loaders = {o: Loader(s, self.batch_per_rank, train=True, seed=t.seed, shard=self.world,
                                  num_workers=config.data.num_workers, augment=augment,
                                  sequence_length=config.model.sequence_length) for o, s in self.stores.items()}

    def _checkpoint_to_resume(self, resume: bool, restarted: bool) -> dict | None:
        """The run folder's newest good checkpoint when resuming (--resume, or torchrun restarted the
        workers); --resume on a folder without checkpoints is an error."""
        if not (resume or restarted):
            return None
        if ckpt.list_checkpoints(self.run_dir):
            return ckpt.load_latest_good(self.run_dir, map_location=self.world.device,
                                         warn=self._say if self.world.is_main else None)
        if resume:
            raise UserError(f"{self.run_dir}: --resume given but the run folder has no checkpoints")
        return None

    def _start_counters(self) -> None:
        self.step = 0
        self.nonfinite_total = 0
        self.nonfinite_run = 0
        self.failed_saves = 0  # checkpoints in a row that could not be written (a full disk)
        self.save_problem: str | None = None  # why the last one failed, for a stop's last line
        # This rank's per-step values since the last log record: checkpointed, so that a resumed
        # run logs the same window means as the uninterrupted one.
        self.pending: dict[str, list[torch.Tensor]] = {}
        self._steps_here = 0  # steps this process has taken (a resumed run starts at 0 too)
        self._pending_compile_s: float | None = None  # for the next log record
        self._compiled_frames_after_2: int | None = None  # dynamo's count of frames after the 2nd of them

    def _distributed_model(self) -> torch.nn.Module:
        """The model under DDP when there are several ranks, else the model."""
        if not self.world.distributed:
            return self.model
        # Batch norm statistics are global already (cross-replica), so no buffer broadcast.
        # A forward of one organism leaves the other head's parameters unused (not in 'joint').
        with warnings.catch_warnings():
            # torch calls broadcast_buffers deprecated but says to keep it where buffers must not
            # be synced at all, which is the case here.
            warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
            return DistributedDataParallel(
                self.model, device_ids=[self.world.device] if self.world.device.type == "cuda" else None,
                broadcast_buffers=False,
                find_unused_parameters=(self.config.train.update != "joint"
                                        or set(self.config.model.heads) != set(self.organisms)))

    def _compiled(self, model: torch.nn.Module):
        """`model` under torch.compile with train.compile. The model compiles whole at world size 1
        (tests/test_compile.py); under DDP dynamo breaks once in DDP's own forward (its logger) and
        compiles the model inside it, the batch-norm exchanges being one opaque operator each
        (distributed/reduce.py). One graph per head."""
        if not self.config.train.compile:
            return model
        if self.world.distributed and not _ddp_optimizer_takes_custom_functions():
            # torch 2.4's DDPOptimizer refuses graphs holding autograd functions: one gradient bucket
            torch._dynamo.config.optimize_ddp = False
        if keep_freed_memory(self.world.device) and self.world.is_main:
            self._say(f"compiled on a CPU: glibc keeps freed memory for the next step (faster; "
                      f"{KEEP_FREED_SWITCH}=0 returns it to the system as before)")
        return compile_model(model)

    def _prepare_run_folder(self) -> None:
        """Rank 0 makes the run folder, removes temporaries of saves cut short and writes config.yaml."""
        if self.world.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            stale = ckpt.remove_stale_temporaries(self.run_dir)
            if stale:
                self._say(f"{self.run_dir}: removed {len(stale)} temporary files of saves cut short ({stale[0].name}, ...)")
            self.config.write(self.run_dir / "config.yaml")
        barrier()

    def _claim_run_folder(self, fresh: bool) -> None:
        """Rank 0 takes the run folder's lock (another run holding it: RunFolderBusy, status 2) and,
        for a `fresh` run, refuses a folder that holds a run; every rank learns the answer."""
        # One run per folder, decided before anything is read or written there; every rank learns
        # rank 0's answer so that all of them leave at once.
        self._lock = None
        refused = None
        if self.world.is_main:
            try:
                self._lock = lock_run_folder(self.run_dir)
            except RunFolderBusy as e:
                refused = str(e)
        refused = next((r for r in all_gather_objects(refused, "the run-folder lock's all_gather") if r), None)
        if refused:
            teardown()
            raise RunFolderBusy(refused)
        if fresh:  # a fresh run: never over another run's files
            # rank 0 looks (the folder may be on its node only) and every rank stops alike
            refusals = all_gather_objects(_refusal(self.run_dir) if self.world.is_main else None,
                                          "the run-folder check's all_gather")
            if refusals[0]:
                unlock_run_folder(self._lock)
                raise UserError(refusals[0])

    # -- state ---------------------------------------------------------------------------------

    def _restore(self, state: dict) -> None:
        saved_world = len(state["rng"])
        if saved_world != self.world.world_size:
            raise UserError(f"{state['path']}: saved by {saved_world} ranks, now {self.world.world_size}; an exact "
                            "resume needs the same number of ranks")
        ckpt.check_same_model(state, self.model, self.config.to_dict()["model"])
        self.model.load_state_dict(state["model"])
        scales = [group["lr_scale"] for group in self.optimizer.param_groups]
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as e:  # another grouping or other trainable parameters
            raise UserError(f"{state['path']}: its optimizer state does not fit this run's ({e}); a resume needs "
                            "the checkpoint's train.freeze, lora settings and the same split into learning-rate "
                            "groups (head_learning_rate, learning_rate_multipliers); or start a new run with "
                            "train.init_from") from None
        for group, scale in zip(self.optimizer.param_groups, scales):
            group["lr_scale"] = scale  # the config's factors, not the checkpoint's, where the grouping agrees
        for o, loader in self.loaders.items():
            loader.load_state_dict(state["loaders"][o])
        ckpt.set_rng_state(state["rng"][self.world.rank], self.world.device)
        self.step = state["step"]
        self.nonfinite_total = state.get("nonfinite_total", 0)
        self.nonfinite_run = state.get("nonfinite_run", 0)
        pending = state.get("log_pending", [{}] * self.world.world_size)[self.world.rank]
        self.pending = {k: list(v.to(self.world.device).unbind()) for k, v in pending.items()}

    def save(self, last: bool = False) -> Path | None:
        """Write a checkpoint (rank 0); returns it, or when it could not be written (a full disk:
        said in one line, training goes on) the newest one there is, None when there is none.
        Stops after 3 such in a row. With `last` (the run stops next) a failure is not said here but
        left in self.save_problem for the caller's last line."""
        rngs = all_gather_objects(ckpt.rng_state(self.world.device), "the checkpoint's all_gather of RNG states")
        pending = all_gather_objects({k: torch.stack(v).cpu() for k, v in self.pending.items()},
                                     "the checkpoint's all_gather of the log window")
        path = ckpt.checkpoint_path(self.run_dir, self.step)
        problem = None
        if self.world.is_main:
            state = {"step": self.step, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "loaders": {o: loader.state_dict() for o, loader in self.loaders.items()}, "rng": rngs,
                     "config": self.config.to_dict(), "nonfinite_total": self.nonfinite_total,
                     "nonfinite_run": self.nonfinite_run, "log_pending": pending}
            try:
                path = ckpt.save_checkpoint(self.run_dir, state, self.config.train.keep_checkpoints)
                self.failed_saves = 0
            except ckpt.CheckpointNotSaved as e:
                self.failed_saves += 1
                problem = str(e)
                if not last:
                    self._say(f"step {self.step}: checkpoint not saved ({self.failed_saves} in a row): {e}")
        failed = all_reduce_(torch.tensor([self.failed_saves], device=self.world.device), op=dist.ReduceOp.MAX,
                             what="the all_reduce after a checkpoint")
        self.failed_saves = int(failed.item())
        if self.failed_saves == 0:
            return path
        if last:  # every rank's last line says why
            self.save_problem = all_gather_objects(problem, "the all_gather of why the checkpoint failed")[0]
        newest = (ckpt.list_checkpoints(self.run_dir) or [None])[-1]
        if self.failed_saves >= _MAX_FAILED_SAVES and not last:
            last_good = (f"the last good checkpoint is {newest}; free space and --resume" if newest else
                         "no checkpoint was ever saved, so there is nothing to resume from; free space and start "
                         "the run again")
            raise UserError(f"{self.run_dir}: {self.failed_saves} checkpoints in a row could not be saved; stopped at "
                            f"step {self.step}, {last_good}")
        return newest

    def _save_last(self, why: str) -> Path:
        """The checkpoint of a run that stops now (`why`, e.g. 'stopped by SIGTERM'), or, when none
        can be saved and none was before, a UserError saying that nothing could be saved."""
        path = self.save(last=True)
        if self.failed_saves == 0:
            return path
        if path is None:
            self._report_end(f"{why}, no checkpoint")
            raise UserError(f"{why} at step {self.step}: no checkpoint could be saved ({self.save_problem}) and none "
                            "was saved before, so there is nothing to resume from; free space and start the run again")
        if self.world.is_main:
            self._say(f"step {self.step}: checkpoint not saved ({self.save_problem}); the newest is {path.name}")
        return path

    def _say(self, message: str) -> None:
        print(f"enformer-train train: {message}", file=sys.stderr, flush=True)

    # -- the step -------------------------------------------------------------------------------

    def _contexts(self, sync: bool):
        """(no gradient all-reduce unless `sync`, bf16 autocast when on) for one micro-batch."""
        no_sync = self.ddp.no_sync() if self.world.distributed and not sync else contextlib.nullcontext()
        amp = torch.autocast(self.world.device.type, dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext()
        return no_sync, amp

    def _backward(self, organisms: list[str], batches: dict[str, list[dict]], last_in_update: bool) -> dict:
        """Forward and backward over the micro-batches of one update group: `organisms` together in
        one trunk forward (their batches concatenated, so batch norm sees them all; one organism: its
        own batch and head), each head on its organism's part; the loss is the sum of the organisms'
        mean losses. Returns {'loss/<organism>': its mean loss}."""
        dtype = self.config.train.parameter_dtype
        totals = {o: torch.zeros((), device=self.world.device, dtype=dtype) for o in organisms}
        micro = len(batches[organisms[0]])
        what = (f"the forward/backward of {organisms[0]}" if len(organisms) == 1 else "the joint forward/backward")
        for i in range(micro):
            parts = [to_device(batches[o][i], self.world.device) for o in organisms]
            no_sync, amp = self._contexts(sync=last_in_update and i == micro - 1)
            with no_sync, watching(f"{what} (batch-norm and gradient all_reduce)"):
                with amp:
                    if len(organisms) == 1:
                        preds = {organisms[0]: self.forward(parts[0]["sequence"], head=organisms[0])}
                    else:
                        preds = self.forward(torch.cat([p["sequence"] for p in parts]))
                loss, offset = 0.0, 0
                for organism, part in zip(organisms, parts):
                    size = part["sequence"].shape[0]
                    organism_loss = poisson_loss(preds[organism][offset:offset + size], part["target"])
                    totals[organism] += organism_loss.detach() / micro
                    loss = loss + organism_loss
                    offset += size
                (loss / micro).backward()
        return {f"loss/{o}": v for o, v in totals.items()}

    def _update(self, heads: list[str]) -> torch.Tensor:
        """Clip by global norm and step; a non-finite gradient skips the update. Returns the norm."""
        for name, head in self.model.heads.items():
            if name not in heads:
                for p in head.parameters():
                    p.grad = None  # DDP fills unused parameters with zeros; Adam must skip them
        params = [p for p in self.model.parameters() if p.grad is not None]
        clip = self.config.train.clip_grad_norm
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else math.inf)
        if torch.isfinite(norm):
            self.optimizer.step()
        else:
            self.nonfinite_total += 1
            self._skipped_in_step += 1
        self.optimizer.zero_grad(set_to_none=True)
        return norm.detach()

    def train_step(self, batches: dict[str, list[dict]]) -> dict[str, torch.Tensor]:
        """One step on {organism: [micro-batch, ...]} (one micro-batch per accumulation step).

        Returns scalar tensors: 'loss/<organism>' (the organism's mean Poisson loss this step), and
        the global gradient norm before clipping: 'grad_norm/<organism>' per update with
        update='alternate', or one 'grad_norm' with 'sum' and 'joint'. A non-finite norm skips the
        update and is counted in self._skipped_in_step.
        """
        self._skipped_in_step = 0
        lr = learning_rate(self.step, self.config.train)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        update = self.config.train.update
        # update groups: each organism its own forward and update (alternate), each its own forward
        # and one update (sum), or all in one forward and one update (joint)
        groups = [[o] for o in self.organisms] if update != "joint" else [self.organisms]
        out = {}
        for k, group in enumerate(groups):
            out.update(self._backward(group, batches, last_in_update=update == "alternate" or k == len(groups) - 1))
            if update == "alternate":
                out[f"grad_norm/{group[0]}"] = self._update(group)
        if update != "alternate":
            out["grad_norm"] = self._update(self.organisms)
        return out

    # -- validation -----------------------------------------------------------------------------

    def validate(self) -> dict[str, float]:
        t = self.config.train
        set_where(f"validation at step {self.step}")
        values = {}
        for organism, store in self.valid.items():
            stats = evaluate_store(self.model, store, organism, self.world, t.eval_batch_per_rank or self.batch_per_rank,
                                   max_batches=t.eval_batches, num_workers=self.config.data.num_workers,
                                   autocast=self.autocast, sequence_length=self.config.model.sequence_length)
            for key, value in stats.summary(cage_tracks(store)).items():
                values[f"valid/{organism}/{key}"] = value
        return values

    # -- the loop -------------------------------------------------------------------------------

    def _on_signal(self, signum, frame):
        self._stop_signal = signum

    def _stop_requested(self) -> int:
        flag = torch.tensor([self._stop_signal], device=self.world.device)
        return int(all_reduce_(flag, op=dist.ReduceOp.MAX, what="the stop-signal all_reduce").item())

    def fit(self) -> dict[str, float]:
        t = self.config.train
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        iterators = {o: iter(loader) for o, loader in self.loaders.items()}
        bar = None
        if self.world.is_main:

            bar = progress(t.steps, "train", "step", initial=self.step)
        timing = {"time": time.perf_counter(), "steps": 0}  # since the last log record
        last_eval: dict[str, float] = {}
        try:
            if self.step == 0 and t.eval_at_start:
                last_eval = self.validate()
                self.log.log(0, last_eval)
            while self.step < t.steps:
                set_where(f"step {self.step + 1}")
                batches = {o: [next(iterators[o]) for _ in range(self.accumulation)] for o in self.organisms}
                started = time.perf_counter()
                out = self.train_step(batches)
                self.step += 1
                timing["steps"] += 1
                if t.compile:
                    self._note_compilation(time.perf_counter() - started)
                self.nonfinite_run = self.nonfinite_run + 1 if self._skipped_in_step else 0
                for key, value in out.items():
                    self.pending.setdefault(key, []).append(value)
                if self.nonfinite_run >= t.max_nonfinite:
                    path = self._save_last("stopped for non-finite steps")
                    self._report_end(f"stopped for non-finite steps, checkpoint {path.name}")
                    raise NonFiniteError(f"{t.max_nonfinite} steps in a row had a non-finite loss or gradient "
                                         f"(step {self.step}); saved {path}. Check the data for NaN/inf targets, or "
                                         "lower train.learning_rate")
                if self.step % t.log_every == 0 or self.step == t.steps:
                    record = self._log_record(self.pending, timing, bar)
                    self.pending = {}
                    self.log.log(self.step, record)
                if self.step % t.eval_every == 0 or self.step == t.steps:
                    last_eval = self.validate()
                    self.log.log(self.step, last_eval)
                    if bar is not None:
                        bar.write(f"step {self.step}: " + ", ".join(
                            f"{k.split('/', 1)[1]} {v:.4f}" for k, v in last_eval.items() if k.endswith("pearson_r")))
                if self.step % t.checkpoint_every == 0 or self.step == t.steps:
                    self.save()
                signum = self._stop_requested()
                if signum:
                    path = self._save_last(f"stopped by {signal.Signals(signum).name}")
                    self._report_end(f"stopped by {signal.Signals(signum).name}, checkpoint {path.name}")
                    raise Stopped(signum, str(path))
            if self.world.is_main:
                save_model(finetune.plain_model(self.model), self.run_dir / "model.safetensors")
            barrier("the barrier after saving the model")
            self._report_end("finished")
            return last_eval
        finally:
            if bar is not None:
                bar.close()
            for s, handler in previous.items():
                signal.signal(s, handler)
            self.log.close()

    def _note_compilation(self, seconds: float) -> None:
        """With train.compile: the first step of this process, which compiles, is said and logged as
        compile_s; after the second, every log record holds `recompiles`: the frames dynamo compiled
        since (0 when the step compiled once for good)."""
        self._steps_here += 1
        if self._steps_here == 1:
            self._pending_compile_s = seconds
            if self.world.is_main:
                self._say(f"step {self.step}: torch.compile compiled the training step in {seconds:.1f} s "
                          "(the step's time)")
        elif self._steps_here == 2:
            self._compiled_frames_after_2 = _compiled_frames()

    def _report_end(self, end: str) -> None:
        """The run's end in metrics.jsonl ({'end': ...}; a resumed run drops its predecessor's) and
        on stdout, with the number of updates skipped for a non-finite loss or gradient."""
        self.log.log(self.step, {"end": end, "nonfinite_skipped": self.nonfinite_total})
        if self.world.is_main:
            print(f"step {self.step}: {end}; {self.nonfinite_total} updates skipped for a non-finite loss or "
                  "gradient", flush=True)

    def _log_record(self, pending: dict, timing: dict, bar) -> dict:
        values = {}
        for key, items in pending.items():
            stacked = torch.stack(items)
            stacked = stacked if stacked.dtype == torch.float64 else stacked.float()  # train.precision=fp64
            if key.startswith("loss/"):
                # mean over ranks of the mean over steps; non-finite steps are counted, not averaged
                finite = torch.isfinite(stacked)
                both = torch.stack([torch.where(finite, stacked, 0).sum(), finite.sum().to(stacked.dtype)])
                all_reduce_(both, what="the log record's loss all_reduce")
                values[key] = (both[0] / both[1]).item() if both[1] > 0 else float("nan")
            else:
                values[key] = stacked[-1].item()
        elapsed = time.perf_counter() - timing["time"]
        samples = timing["steps"] * self.config.train.batch_size * len(self.organisms)
        values["lr"] = learning_rate(self.step - 1, self.config.train)
        values["samples_per_s"] = samples / elapsed
        values["tflops_per_s"] = samples * self.flops_per_sample / elapsed / 1e12
        peak = self._peak_flops()
        if peak:
            values["mfu"] = samples * self.flops_per_sample / elapsed / (peak * self.world.world_size)
        values["nonfinite_skipped"] = self.nonfinite_total
        if self._pending_compile_s is not None:
            values["compile_s"] = self._pending_compile_s
            self._pending_compile_s = None
        if self._compiled_frames_after_2 is not None:
            values["recompiles"] = _compiled_frames() - self._compiled_frames_after_2
        timing["time"], timing["steps"] = time.perf_counter(), 0
        if bar is not None:
            bar.update(self.step - bar.n)
            bar.set_postfix({k.split("/")[-1] if k.startswith("loss/") else k: f"{v:.4g}" for k, v in values.items()
                             if k.startswith("loss/") or k in ("lr", "samples_per_s")})
        return values

    def _peak_flops(self) -> float | None:
        if self.world.device.type != "cuda":
            return None
        name = torch.cuda.get_device_name(self.world.device)
        return next((v for k, v in _PEAK_FLOPS.items() if k in name), None)

    def close(self) -> None:
        teardown()
        unlock_run_folder(self._lock)
        self._lock = None


def _refusal(run_dir: Path) -> str | None:
    try:
        ckpt.refuse_existing_run(run_dir)
    except UserError as e:
        return str(e)
    return None


def init_head_biases(model, stores: dict, max_samples: int = 512) -> None:
    """Each head's bias := softplus^-1 of its tracks' mean target over up to `max_samples` training
    samples spread evenly over the split (the same samples, so the same values, on every rank)."""
    for organism, store in stores.items():
        picks = np.unique(np.linspace(0, len(store) - 1, min(max_samples, len(store))).round().astype(np.int64))
        total = np.zeros(store.num_targets)
        for i in picks:
            total += store.read_target(int(i)).astype(np.float64).mean(axis=0)
        mean = np.maximum(total / len(picks), 1e-3)  # an all-zero track starts at softplus(-6.9)
        with torch.no_grad():
            model.heads[organism].linear.bias.copy_(torch.from_numpy(np.log(np.expm1(mean))))


def train(config: Config, resume: bool = False) -> dict[str, float]:
    trainer = Trainer(config, resume=resume)
    try:
        return trainer.fit()
    finally:
        trainer.close()


def _compiled_frames() -> int:
    """How many frames torch.compile (dynamo) has compiled in this process so far."""
    from torch._dynamo.utils import counters  # private, but the one count of compilations torch keeps

    return int(counters["frames"]["ok"])


def _ddp_optimizer_takes_custom_functions() -> bool:
    """Whether this torch's DDPOptimizer (dynamo's graph splitter at DDP's gradient buckets) takes a
    graph with higher-order operators, which the model's custom autograd functions become; older
    ones raise NotImplementedError on the first step. Read off its source: no version says it."""
    from torch._dynamo.backends import distributed  # dynamo's, only under train.compile

    return "Found a higher order op in the graph" not in inspect.getsource(distributed)
