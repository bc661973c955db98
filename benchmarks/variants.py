"""Variants/s of `enformer-train score-variants` on CPU, and an estimate for a GPU from measured FLOPs.

Two models: the demo's (configs/tiny.yaml, 6,144 bp) and the paper's (196,608 bp), with random
weights (speed does not depend on their values), batch 1, SNVs at distinct positions (two windows
a variant: no reference shared), through the real command (VCF parsing, windows, forward passes,
output). The full model runs forward only on 1 variant by default: about a minute on 2 CPU cores.

The GPU column is an estimate, not a measurement: variants/s = ASSUMED_FLOPS / (2 x forward FLOPs
of one window), the forward FLOPs counted by torch's FLOP counter (enformer_train.model.info).
ASSUMED_FLOPS is 400 TFLOP/s: an H100's bf16 dense peak is ~990 TFLOP/s, and a large batch of
inference reaches roughly 40% of it; change it with --gpu-tflops.

    python benchmarks/variants.py [--demo-variants 16] [--full-variants 1] [--threads 2] [--gpu-tflops 400]

With --memory it measures instead the peak resident memory of every rank of a 2-process torchrun
of the command at two VCF sizes (a small model with a 5,313-track head, as the paper's human head,
on 512-bp windows; SNVs 5 bp apart): flat when no rank holds more than a chunk of scores.

    python benchmarks/variants.py --memory [--sizes 20000,200000] [--nproc 2]

With --read it times one streaming pass over a VCF of N SNVs (parsing, the check of every REF
against the FASTA, chunking: what each of the command's three passes does) and the pass's peak
memory beyond the process's start: flat in N when no pass holds the file.

    python benchmarks/variants.py --read 100000,1000000
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

from enformer_train import Enformer, save_model
from enformer_train.cli import build_parser, score_options
from enformer_train.config import load_model_config
from enformer_train.model.info import measure
from enformer_train.variants import score_variants

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _inputs(folder: str, length: int, variants: int, seed: int = 0, spacing: int = 1000) -> tuple[str, str]:
    """A random one-chromosome FASTA that holds every window, and a VCF of SNVs `spacing` bp apart."""
    rng = np.random.default_rng(seed)
    size = length + spacing * variants + 2000
    seq = np.frombuffer(b"ACGT", np.uint8)[rng.integers(0, 4, size)].tobytes().decode()
    fasta = os.path.join(folder, "genome.fa")
    with open(fasta, "w") as f:
        f.write(">chr1\n" + "".join(seq[i:i + 60] + "\n" for i in range(0, size, 60)))
    vcf = os.path.join(folder, "v.vcf")
    with open(vcf, "w") as f:
        f.write("#CHROM\tPOS\tID\tREF\tALT\n")
        for k in range(variants):
            pos = length // 2 + spacing * k + 1
            ref = seq[pos - 1]
            f.write(f"chr1\t{pos}\tv{k}\t{ref}\t{'A' if ref != 'A' else 'C'}\n")
    return fasta, vcf


def run(name: str, config, variants: int, gpu_tflops: float) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        model = Enformer(config).eval()
        weights = os.path.join(folder, "model.safetensors")
        save_model(model, weights)
        del model
        fasta, vcf = _inputs(folder, config.sequence_length, variants)
        args = build_parser().parse_args(["score-variants", "--checkpoint", weights, "--fasta", fasta, "--vcf", vcf,
                                          "--out", os.path.join(folder, "out.h5"), "--batch-size", "1", "--quiet",
                                          "--device", "cpu"])
        started = time.time()
        summary = score_variants(score_options(args))
        total = time.time() - started
    forward = measure(config)["forward_flops"]
    return {"model": name, "input_bp": config.sequence_length, "variants": variants,
            "cpu_variants_per_s": summary["scored"] / summary["seconds"], "seconds": summary["seconds"],
            "total_s": total, "forward_gflops": forward / 1e9,
            "gpu_variants_per_s": gpu_tflops * 1e12 / (2 * forward)}


def memory(sizes: list[int], nproc: int) -> None:
    """Peak RSS of each rank of `torchrun score-variants` (SAD and SAR, .h5) at each VCF size."""
    import dataclasses
    import json
    import subprocess

    config = load_model_config(os.path.join(ROOT, "configs", "tiny.yaml"))
    config = dataclasses.replace(config, sequence_length=512, target_length=4, num_transformer_layers=1,
                                 heads={"human": 5313})
    print(f"score-variants under torchrun, {nproc} ranks, a {config.heads['human']}-track head, "
          f"{config.sequence_length}-bp windows, --stats SAD,SAR, .h5; peak RSS (ru_maxrss) of each rank")
    print("| variants | " + " | ".join(f"rank {r} MiB" for r in range(nproc)) + " | largest / smallest | scoring s |")
    print("|---|" + "---|" * nproc + "---|---|")
    for n in sizes:
        with tempfile.TemporaryDirectory() as folder:
            torch.manual_seed(0)
            weights = os.path.join(folder, "model.safetensors")
            save_model(Enformer(config).eval(), weights)
            fasta, vcf = _inputs(folder, config.sequence_length, n, spacing=5)
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.path.join(ROOT, "src")}
            started = time.time()
            subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                            os.path.abspath(__file__), "--rank-peak", folder, "--", "score-variants",
                            "--checkpoint", weights, "--fasta", fasta, "--vcf", vcf, "--stats", "SAD,SAR",
                            "--out", os.path.join(folder, "out.h5"), "--batch-size", "64", "--quiet",
                            "--device", "cpu"], env=env, check=True, stdout=subprocess.DEVNULL)
            seconds = time.time() - started
            peaks = [json.load(open(os.path.join(folder, f"peak-{r}.json"))) / 2**10 for r in range(nproc)]
        print(f"| {n:,} | " + " | ".join(f"{p:,.0f}" for p in peaks) + f" | {max(peaks) / min(peaks):.2f}x | "
              f"{seconds:.0f} |", flush=True)


def _rss() -> int:
    """This process's resident memory now, bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def read_pass(sizes: list[int]) -> None:
    """Seconds and the growth of resident memory during one streaming pass over VCFs of `sizes` SNVs."""
    from enformer_train.data.formats.genome import Genome
    from enformer_train.variants.vcf import Vcf

    print("one streaming pass over the VCF (parse, REF checked against the FASTA, chunks of 256)")
    print("| variants | seconds | variants/s | peak RSS growth MiB |")
    print("|---|---|---|---|")
    for n in sizes:
        with tempfile.TemporaryDirectory() as folder:
            fasta, vcf = _inputs(folder, 512, n, spacing=5)
            genome = Genome(fasta)
            before, peak, count = _rss(), 0, 0
            started = time.time()
            for chunk in Vcf(vcf, genome, "error", 256).chunks():
                count += len(chunk)
                peak = max(peak, _rss())
            seconds = time.time() - started
            grown = (peak - before) / 2**20
            assert count == n
        print(f"| {n:,} | {seconds:.1f} | {n / seconds:,.0f} | {grown:,.1f} |", flush=True)


def _rank_peak(folder: str, argv: list[str]) -> int:
    """Under torchrun: the command, then this rank's peak RSS (KiB) in FOLDER/peak-RANK.json."""
    import json
    import resource

    from enformer_train.cli import main as cli_main

    code = cli_main(argv)
    with open(os.path.join(folder, f"peak-{os.environ['RANK']}.json"), "w") as f:
        json.dump(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, f)
    return code


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--rank-peak":
        return _rank_peak(sys.argv[2], sys.argv[4:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-variants", type=int, default=16)
    parser.add_argument("--full-variants", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gpu-tflops", type=float, default=400.0, help="assumed effective bf16 TFLOP/s of the GPU")
    parser.add_argument("--skip-full", action="store_true")
    parser.add_argument("--memory", action="store_true", help="peak RSS of each rank at --sizes variants instead")
    parser.add_argument("--sizes", default="20000,200000", help="with --memory: VCF sizes")
    parser.add_argument("--nproc", type=int, default=2, help="with --memory: ranks")
    parser.add_argument("--read", help="VCF sizes, comma-separated: time one streaming pass over each instead")
    args = parser.parse_args()
    if args.read:
        return read_pass([int(n) for n in args.read.split(",")])
    if args.memory:
        return memory([int(n) for n in args.sizes.split(",")], args.nproc)
    torch.set_num_threads(args.threads)
    rows = [run("demo (configs/tiny.yaml)", load_model_config(os.path.join(ROOT, "configs", "tiny.yaml")),
                args.demo_variants, args.gpu_tflops)]
    if not args.skip_full:
        rows.append(run("full (the paper's)", load_model_config(None), args.full_variants, args.gpu_tflops))
    print(f"score-variants, batch 1, SNVs (2 windows each), {args.threads} CPU threads, torch {torch.__version__}")
    print(f"{'model':<26}{'input bp':>10}{'variants':>10}{'scoring s':>11}{'CPU var/s':>11}"
          f"{'fwd GFLOP':>11}{'GPU var/s (est.)':>18}")
    for r in rows:
        # a model of a few GFLOP is bound by kernel launches and data on a GPU, not by FLOPs
        gpu = f"{r['gpu_variants_per_s']:,.0f}" if r["forward_gflops"] >= 100 else "n/a (too small)"
        print(f"{r['model']:<26}{r['input_bp']:>10,}{r['variants']:>10}{r['seconds']:>11.1f}"
              f"{r['cpu_variants_per_s']:>11.3f}{r['forward_gflops']:>11.1f}{gpu:>18}")
    print(f"GPU estimate: {args.gpu_tflops:.0f} TFLOP/s effective (assumed: ~40% of an H100's bf16 dense peak) "
          f"/ (2 windows x forward FLOPs); a reference window shared by k alleles lowers the cost to 1 + 1/k windows.")


if __name__ == "__main__":
    sys.exit(main())
