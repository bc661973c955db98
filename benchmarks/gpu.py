"""The project on one CUDA GPU: is it right, how fast is it, does the whole system run there.

    python benchmarks/gpu.py [--out DIR] [--budget-s 420]

Sections, each reported on its own (a failure in one is printed and the next goes on):
1. parity: a small Enformer (channels 192, 2 layers, 196,608 bp) with every weight randomised, on
   the GPU in float32 (TF32 off; then cuDNN's default TF32 convolutions) and under bf16 autocast,
   against the same model in float64 on the CPU: ||gpu - ref|| / ||ref|| of both heads' outputs
   and of all gradients, and the gradients' cosine.
2. train: the paper's model (251 M parameters), training mode, Adam, bf16 autocast, batch 1/2/4 per
   GPU (and 8 with gradient checkpointing): seconds per step (median of 5 after 2 warm-ups),
   samples/s, TFLOP/s from the FLOP counter of `enformer-train info`, MFU against 989 TFLOP/s,
   peak GPU memory.
3. infer: the paper's model, eval + no_grad, bf16, batch 1/8/16: windows/s.
4. score-variants: the real command on the paper's model with random weights, 64 SNVs at distinct
   positions (two windows each), --bf16 --batch-size 16 --device cuda: variants/s.
5. demo: `enformer-train demo --device cuda --nproc 1` (the tiny model, the whole system: data,
   prepare, trainer with bf16 autocast, validation, checkpoints, figures): seconds and validation R.
6. profile: torch.profiler's table of the CUDA kernels of one inference batch and one training
   step of the paper's model (DIR/profile-*.txt).
7. compile (only when named in --sections): torch.compile of the paper's model, training batch 2
   and inference batch 8.
Prints a table last and writes DIR/gpu.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from enformer_train import Enformer, EnformerConfig, save_model  # noqa: E402
from enformer_train.compiling import compile_model  # noqa: E402
from enformer_train.model.enformer import one_hot  # noqa: E402
from enformer_train.model.info import measure  # noqa: E402
from enformer_train.train.loss import poisson_loss  # noqa: E402

PEAK_BF16 = 989e12  # H100/H200 dense bf16, for MFU
DEVICE = "cuda"
SMOKE = {}  # --smoke: small sizes on the CPU, to check this script without a GPU


def _config(**values) -> EnformerConfig:
    """The paper's model (or, under --smoke, a small one) with `values` changed."""
    values = {"cross_replica_batchnorm": False, **SMOKE, **values}
    return EnformerConfig(**values)


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else float("nan")


def _reset_peak() -> None:
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.detach().double().cpu(), ref.detach().double().cpu()
    if not torch.isfinite(a).all():
        return float("nan")
    return float((a - ref).norm() / ref.norm())


def parity() -> list[dict]:
    from model_helpers import randomise_

    config = _config(channels=SMOKE.get("channels", 192), num_transformer_layers=2, heads={"human": 64, "mouse": 32},
                     tower_divisible_by=16,
                     dropout_rate=0.0, attention_dropout_rate=0.0, positional_dropout_rate=0.0, final_dropout_rate=0.0)
    torch.manual_seed(0)
    model = Enformer(config)
    randomise_(model, seed=1)
    model.eval()  # moving averages: the same function on both devices
    codes = torch.randint(0, 4, (2, config.sequence_length), generator=torch.Generator().manual_seed(2))

    def run(m: torch.nn.Module, device: str, dtype: torch.dtype, autocast: bool):
        m = m.to(device=device, dtype=dtype)
        m.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            out = m(one_hot(codes.to(device), dtype))
        loss = sum((o.float() * torch.linspace(0.5, 1.5, o.shape[-1], device=device)).sum() for o in out.values())
        loss.backward()
        grads = torch.cat([p.grad.reshape(-1).double().cpu() for p in m.parameters() if p.grad is not None])
        return {k: v.detach().double().cpu() for k, v in out.items()}, grads

    ref_out, ref_grad = run(model, "cpu", torch.float64, False)
    rows = []
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    for name, autocast, allow_tf32 in (("float32, TF32 off", False, False), ("float32 (TF32 convs, default)", False, None),
                                      ("bf16 autocast", True, None)):
        if allow_tf32 is not None:
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        try:
            out, grad = run(model, DEVICE, torch.float32, autocast)
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
        rows.append({"section": "parity", "what": name, "human": _rel(out["human"], ref_out["human"]),
                     "mouse": _rel(out["mouse"], ref_out["mouse"]), "gradients": _rel(grad, ref_grad),
                     "gradient_cosine": float(torch.nn.functional.cosine_similarity(grad, ref_grad, dim=0))})
    return rows


def profile(out_dir: str) -> list[dict]:
    """Where the time goes: CUDA kernels of one bf16 inference batch of 8 and one training step of 2."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    torch.manual_seed(0)
    config = _config()
    model = Enformer(config).to(DEVICE)
    rows = []
    for name, batch, training in (("inference, batch 8", 8, False), ("training step, batch 2", 2, True)):
        model.train(training)
        codes = torch.randint(0, 4, (batch, config.sequence_length), device=DEVICE)

        def step():
            with torch.set_grad_enabled(training), torch.autocast(DEVICE, dtype=torch.bfloat16):
                out = model(codes)
            if training:
                sum(o.float().mean() for o in out.values()).backward()
                model.zero_grad(set_to_none=True)

        for _ in range(2):
            step()
        _sync()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE == "cuda" else [])
        with torch_profile(activities=activities) as prof:
            step()
            _sync()
        key = "self_cuda_time_total" if DEVICE == "cuda" else "self_cpu_time_total"
        table = prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=70)
        with open(os.path.join(out_dir, f"profile-{'train' if training else 'infer'}.txt"), "w") as f:
            f.write(table)
        print(f"\n{name}\n{table}", flush=True)
        rows.append({"section": "profile", "what": name, "table": f"profile-{'train' if training else 'infer'}.txt"})
    return rows


def _time_steps(step, warmup: int = 2, repeat: int = 5) -> float:
    for _ in range(warmup):
        step()
    _sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        step()
        _sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def train(flops: float) -> list[dict]:
    rows = []
    for batch, checkpointing in ((1, False), (2, False), (4, False), (8, True)):
        _reset_peak()
        torch.manual_seed(0)
        config = _config(gradient_checkpointing=checkpointing)
        model = Enformer(config).to(DEVICE).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
        codes = torch.randint(0, 4, (batch, config.sequence_length), device=DEVICE)
        targets = {h: torch.rand(batch, config.target_length, n, device=DEVICE) * 4 for h, n in config.heads.items()}

        def step():
            with torch.autocast(DEVICE, dtype=torch.bfloat16):
                out = model(codes)
            loss = sum(poisson_loss(out[h].float(), targets[h]) for h in out)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        try:
            seconds = _time_steps(step)
            rows.append({"section": "train", "batch": batch, "checkpointing": checkpointing,
                         "s_per_step": seconds, "samples_per_s": batch / seconds,
                         "tflops": batch * flops / seconds / 1e12, "mfu": batch * flops / seconds / PEAK_BF16,
                         "peak_gib": _peak_gib()})
        except torch.cuda.OutOfMemoryError:
            rows.append({"section": "train", "batch": batch, "checkpointing": checkpointing, "error": "out of memory"})
        del model, optimizer
    return rows


def infer() -> list[dict]:
    rows = []
    torch.manual_seed(0)
    config = _config()
    model = Enformer(config).to(DEVICE).eval()
    for batch in (1, 8, 16):
        _reset_peak()
        codes = torch.randint(0, 4, (batch, config.sequence_length), device=DEVICE)

        def step():
            with torch.no_grad(), torch.autocast(DEVICE, dtype=torch.bfloat16):
                model(codes, head="human")

        seconds = _time_steps(step)
        rows.append({"section": "infer", "batch": batch, "windows_per_s": batch / seconds,
                     "peak_gib": _peak_gib()})
    return rows


def score_variants_speed(folder: str, variants: int = 64) -> list[dict]:
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from variants import _inputs

    from enformer_train.cli import build_parser, score_options
    from enformer_train.variants import score_variants

    torch.manual_seed(0)
    config = _config(cross_replica_batchnorm=True)
    weights = os.path.join(folder, "model.safetensors")
    save_model(Enformer(config).eval(), weights)
    fasta, vcf = _inputs(folder, config.sequence_length, variants)
    rows = []
    for warm in (True, False):  # the first run pays for CUDA start-up and cuDNN's choices
        out = os.path.join(folder, f"out-{warm}.h5")
        args = build_parser().parse_args(["score-variants", "--checkpoint", weights, "--fasta", fasta, "--vcf", vcf,
                                          "--out", out, "--batch-size", "16", "--quiet", "--bf16", "--device", DEVICE])
        summary = score_variants(score_options(args))
        if not warm:
            rows.append({"section": "score-variants", "variants": summary["scored"],
                         "seconds": summary["seconds"], "variants_per_s": summary["scored"] / summary["seconds"]})
    return rows


def demo(out: str) -> list[dict]:
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    started = time.time()
    steps = ["--steps", "8"] if SMOKE else []
    result = subprocess.run([sys.executable, "-m", "enformer_train", "demo", "--out", out, "--device", DEVICE,
                             "--nproc", "1", *steps], env=env, capture_output=True, text=True, timeout=300)
    seconds = time.time() - started
    print(result.stdout[-3000:], result.stderr[-3000:], sep="\n")
    if result.returncode != 0:
        return [{"section": "demo", "error": f"exit {result.returncode}"}]
    metrics = [json.loads(line) for line in open(os.path.join(out, "run", "metrics.jsonl"))]
    row = {"section": "demo", "seconds": seconds}
    for organism in ("human", "mouse"):
        values = [m[f"valid/{organism}/pearson_r"] for m in metrics if f"valid/{organism}/pearson_r" in m]
        row[organism] = values[-1]
    row["train_samples_per_s"] = statistics.median(m["samples_per_s"] for m in metrics if "samples_per_s" in m)
    return [row]


def compiled(flops: float) -> list[dict]:
    """torch.compile of the paper's model (compiling.compile_model, as train.compile=true and --compile
    do; not the trainer's default): training batch 2 and bf16 inference batch 8, timed as sections 2
    and 3 after the compiling warm-up steps."""
    rows = []
    torch.manual_seed(0)
    config = _config()
    model = Enformer(config).to(DEVICE)
    fast = compile_model(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
    for batch, training in ((2, True), (8, False)):
        model.train(training)
        codes = torch.randint(0, 4, (batch, config.sequence_length), device=DEVICE)
        targets = {h: torch.rand(batch, config.target_length, n, device=DEVICE) * 4 for h, n in config.heads.items()}

        def step():
            with torch.set_grad_enabled(training), torch.autocast(DEVICE, dtype=torch.bfloat16):
                out = fast(codes)
            if training:
                sum(poisson_loss(out[h].float(), targets[h]) for h in out).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

        started = time.time()
        step()
        _sync()
        warmup = time.time() - started
        seconds = _time_steps(step, warmup=2)
        row = {"section": "compile", "what": "train" if training else "infer", "batch": batch, "compile_s": warmup,
               "samples_per_s": batch / seconds}
        if training:
            row.update(tflops=batch * flops / seconds / 1e12, mfu=batch * flops / seconds / PEAK_BF16)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu-results"))
    parser.add_argument("--sections", default="parity,train,infer,score-variants,demo,profile")
    parser.add_argument("--smoke", action="store_true", help="small sizes on the CPU: checks this script, measures nothing")
    args = parser.parse_args()
    global DEVICE
    if args.smoke:
        DEVICE = "cpu"
        SMOKE.update(channels=48, num_transformer_layers=1, sequence_length=4096, target_length=16,
                     tower_divisible_by=16, heads={"human": 8, "mouse": 4})
    elif not torch.cuda.is_available():
        sys.exit("no CUDA device (--smoke checks this script on the CPU)")
    os.makedirs(args.out, exist_ok=True)
    name = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"
    print(f"torch {torch.__version__}, {name}, numpy {np.__version__}", flush=True)
    flops = measure(_config())["training_flops"]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as folder:
        sections = {"parity": parity, "train": lambda: train(flops), "infer": infer,
                    "score-variants": lambda: score_variants_speed(folder),
                    "demo": lambda: demo(os.path.join(folder, "demo")), "profile": lambda: profile(args.out),
                    "compile": lambda: compiled(flops)}
        for name in args.sections.split(","):
            started = time.time()
            try:
                new = sections[name]()
            except Exception as e:  # report and go on: one broken section must not hide the others
                traceback.print_exc()
                new = [{"section": name, "error": f"{type(e).__name__}: {e}"[:300]}]
            for row in new:
                row["section_s"] = round(time.time() - started, 1)
                print(json.dumps(row), flush=True)
            rows += new
            with open(os.path.join(args.out, "gpu.json"), "w") as f:
                json.dump({"torch": torch.__version__, "device": name, "rows": rows}, f, indent=1)
    print("\n| section | what | result |\n|---|---|---|")
    for row in rows:
        rest = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in row.items() if k != "section"}
        print(f"| {row['section']} | {', '.join(f'{k}={v}' for k, v in rest.items())} |")


if __name__ == "__main__":
    main()
