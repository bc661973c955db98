"""Fine-tuning against its two baselines, on the demo's synthetic barnyard, same steps for each:

    fine-tune      the demo's trained model (init_from), a new head `k562` on the human store,
                   the trunk frozen
    random trunk   the same head on a frozen randomly initialised trunk
    scratch        the whole model (trunk and head) trained from scratch

Prints the validation Pearson R of each. Needs a finished demo (`enformer-train demo --out DIR`).

    python benchmarks/finetune.py --demo enformer-demo --steps 200
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def run(name: str, out: Path, demo: Path, steps: int, extra: list[str]) -> tuple[float, float]:
    from enformer_train.demo import packaged_config

    run_dir = out / name
    command = [sys.executable, "-m", "enformer_train", "train", "--config", packaged_config("tiny.yaml"),
               f"train.run_dir={run_dir}", f"train.steps={steps}", f"train.eval_every={steps}",
               f"train.checkpoint_every={steps}", f"train.warmup_steps={max(1, steps // 16)}",
               "train.device=cpu", "train.update=alternate", "model.heads={k562: 16}",
               f"data.stores={{k562: {demo / 'stores' / 'human'}}}", *extra]
    started = time.time()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    r = [m["valid/k562/pearson_r"] for m in metrics if "valid/k562/pearson_r" in m][-1]
    return r, time.time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", default="enformer-demo", help="a finished demo's folder")
    parser.add_argument("--out", default="runs/finetune-benchmark")
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    demo, out = Path(args.demo).resolve(), Path(args.out).resolve()
    pretrained = demo / "run" / "model.safetensors"
    if not pretrained.exists():
        sys.exit(f"{pretrained}: no trained demo model; run `enformer-train demo --out {demo}` first")
    if out.exists():
        sys.exit(f"{out}: exists; choose another --out")
    frozen = "train.freeze=[stem, conv_tower, transformer, final_pointwise]"
    rows = [("fine-tune (demo trunk, frozen)", run("finetune", out, demo, args.steps, [f"train.init_from={pretrained}", frozen])),
            ("random trunk, frozen", run("random", out, demo, args.steps, [frozen])),
            ("scratch (whole model)", run("scratch", out, demo, args.steps, []))]
    print(f"\nnew head k562 (16 tracks of the demo's human store), {args.steps} steps each, 1 process, CPU")
    print(f"| {'run':<32} | validation R | seconds |")
    print(f"|{'-' * 34}|--------------|---------|")
    for name, (r, seconds) in rows:
        print(f"| {name:<32} | {r:12.3f} | {seconds:7.0f} |")


if __name__ == "__main__":
    main()
