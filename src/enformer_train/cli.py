"""`enformer-train`: one command, one subcommand per job."""
from __future__ import annotations

import argparse
import sys

from .errors import Stopped, UserError


def _cmd_info(args: argparse.Namespace) -> None:
    from .config import load_model_config
    from .model.info import describe

    print(describe(load_model_config(args.config)))


def _cmd_convert(args: argparse.Namespace) -> None:
    from .model.weights import convert

    convert(args.src, args.dst, fmt=args.format)


def _cmd_prepare(args: argparse.Namespace) -> None:
    from .data.prepare import run_prepare

    run_prepare(args)


def _cmd_train(args: argparse.Namespace) -> None:
    from .config import load_config
    from .train.trainer import train

    result = train(load_config(args.config, args.overrides), resume=args.resume)
    if result:
        print(" ".join(f"{k}={v:.4f}" for k, v in result.items() if k.endswith("pearson_r")))


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from .train.evaluate import run_evaluate

    summary = run_evaluate(args.checkpoint, args.split, args.out, tta=args.tta, batch_size=args.batch_size,
                           max_batches=args.max_batches, device=args.device)
    if summary:
        for organism, values in summary["organisms"].items():
            print(f"{organism}: pearson_r {values['pearson_r']:.4f}, r2 {values['r2']:.4f}, "
                  f"poisson_loss {values['poisson_loss']:.4f}")
        print(f"wrote {args.out}/summary.json and tracks-*.csv")


def _cmd_predict(args: argparse.Namespace) -> None:
    from .predict import run_predict

    print(f"wrote {run_predict(args)}")


def _cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(args.out, steps=args.steps, nproc=args.nproc, device=args.device)


def _cmd_plot(args: argparse.Namespace) -> None:
    from .plot_command import run_plot

    print(f"wrote {run_plot(args)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="enformer-train", description="Train Enformer in PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="synthetic barnyard -> store -> tiny Enformer on 2 processes -> plots")
    p.add_argument("--out", default="enformer-demo", help="work folder (default: ./enformer-demo)")
    p.add_argument("--steps", type=int, help="training steps (default: configs/tiny.yaml's)")
    p.add_argument("--nproc", type=int, default=2, help="training processes (torchrun; default 2)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("info", help="parameters, FLOPs and activation memory of a model config")
    p.add_argument("--config", help="YAML file with a `model:` section (default: the paper's model)")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("convert", help="import Sonnet or enformer-pytorch weights as safetensors")
    p.add_argument("src", help="Sonnet tf.train.Checkpoint prefix, enformer-pytorch state dict (.pt/.bin/.safetensors) or folder")
    p.add_argument("dst", help="output .safetensors file")
    p.add_argument("--format", choices=["auto", "sonnet", "enformer-pytorch"], default="auto")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("train", help="train (one process, or under torchrun on one node or many)")
    p.add_argument("--config", help="YAML config (model:, data:, train:); defaults are the paper's recipe")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in train.run_dir")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="e.g. train.steps=1000")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="metrics of a checkpoint on a split, per track (CSV) and summary (JSON)")
    p.add_argument("--checkpoint", required=True, help="checkpoint file, or a run folder (its latest)")
    p.add_argument("--split", default="test")
    p.add_argument("--out", required=True, help="folder for summary.json and tracks-<organism>.csv")
    p.add_argument("--tta", action="store_true", help="average over reverse complement and shifts of -1, 0, 1")
    p.add_argument("--batch-size", type=int, help="per rank (default: the training batch per rank)")
    p.add_argument("--max-batches", type=int, help="per rank; default the whole split")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("predict", help="predicted tracks for a region of a genome")
    p.add_argument("--checkpoint", required=True, help="training checkpoint, run folder, or .safetensors weights")
    p.add_argument("--fasta", required=True)
    p.add_argument("--region", required=True, help="CHROM:START-END (0-based, end exclusive), e.g. chr1:1000000-1196608")
    p.add_argument("--organism", help="head to predict (default: the model's first)")
    p.add_argument("--tracks", help="track indices and/or description substrings, comma-separated")
    p.add_argument("--targets", help="targets.txt for track descriptions (default: the training store's)")
    p.add_argument("--out", required=True, help=".npz, or .bw for bigWig (needs pyBigWig)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("plot", help="a PNG of a region's tracks: measured (from a store) and predicted")
    p.add_argument("--checkpoint", required=True, help="training checkpoint, run folder, or .safetensors weights")
    p.add_argument("--store", help="a prepared store: plot its sample --sample of --split, measured and predicted")
    p.add_argument("--split", default="valid")
    p.add_argument("--sample", type=int, default=0)
    p.add_argument("--fasta", help="or a genome and --region: predicted tracks only")
    p.add_argument("--region")
    p.add_argument("--organism")
    p.add_argument("--tracks", default="0,1,2,3", help="indices and/or description substrings")
    p.add_argument("--out", required=True, help="PNG file")
    p.set_defaults(func=_cmd_plot)

    p = sub.add_parser("prepare", help="build the 196,608-bp training store from FASTA, BED and Basenji records")
    from .data.prepare import add_prepare_arguments

    add_prepare_arguments(p)
    p.set_defaults(func=_cmd_prepare)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        print(f"enformer-train {args.command}: error: {e}", file=sys.stderr)
        return 1
    except Stopped as e:
        print(f"enformer-train {args.command}: {e}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print(f"enformer-train {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
