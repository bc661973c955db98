"""`enformer-train`: one command, one subcommand per job."""
from __future__ import annotations

import argparse
import sys

from .errors import UserError


def _cmd_info(args: argparse.Namespace) -> None:
    from .model.info import print_info

    print_info(args.config)


def _cmd_convert(args: argparse.Namespace) -> None:
    from .model.weights import convert

    convert(args.src, args.dst, fmt=args.format)


def _cmd_prepare(args: argparse.Namespace) -> None:
    from .data.prepare import run_prepare

    run_prepare(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="enformer-train", description="Train Enformer in PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="parameters, FLOPs and activation memory of a model config")
    p.add_argument("--config", help="YAML file with a `model:` section (default: the paper's model)")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("convert", help="import Sonnet or enformer-pytorch weights as safetensors")
    p.add_argument("src", help="Sonnet tf.train.Checkpoint prefix, enformer-pytorch state dict (.pt/.bin/.safetensors) or folder")
    p.add_argument("dst", help="output .safetensors file")
    p.add_argument("--format", choices=["auto", "sonnet", "enformer-pytorch"], default="auto")
    p.set_defaults(func=_cmd_convert)

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
    except KeyboardInterrupt:
        print(f"enformer-train {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
