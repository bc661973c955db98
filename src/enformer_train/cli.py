"""`enformer-train`: one command, one subcommand per job. This module alone holds argparse: each
command's code is a function with typed parameters that a notebook can call.

Each subcommand imports its module inside its handler, the one place in the package that does so:
`enformer-train --help` and a mistyped flag answer without importing torch, TensorFlow's readers,
h5py or matplotlib (seconds on a cold disk); the modules import their own dependencies at the top.
"""
from __future__ import annotations

import argparse
import os
import sys

from .errors import Stopped, UserError


def _cmd_info(args: argparse.Namespace) -> None:
    from .config import load_model_config
    from .model.info import describe

    print(describe(load_model_config(args.config)))


def _cmd_config(args: argparse.Namespace) -> None:
    from .config import config_from_dict, describe_config, read_config

    print(describe_config(config_from_dict(read_config(args.config, args.overrides), where=args.config or "overrides")),
          end="")


def _cmd_convert(args: argparse.Namespace) -> None:
    from .model.convert import describe_converted, import_model, source_target_length
    from .model.weights import save_model

    if os.path.exists(args.dst) and not args.force:
        raise UserError(f"{args.dst}: exists; pass --force to replace it, or choose another output file")
    target_length, note = source_target_length(args.src, args.target_length)
    model = import_model(args.src, fmt=args.format, target_length=target_length)
    save_model(model, args.dst)
    print(describe_converted(model, args.dst, note))


def _cmd_prepare(args: argparse.Namespace) -> None:
    splits = tuple(s for s in args.splits.split(",") if s)
    if args.targets:
        from .data.producers.coverage_prepare import prepare_coverage

        if not args.regions:
            raise UserError("--targets needs --regions BED (chrom, start, end, split); "
                            "`enformer-train regions` tiles a genome into one")
        if args.bed:
            raise UserError("--bed goes with --basenji; with --targets the regions are --regions")
        manifest = prepare_coverage(
            args.out, args.organism, args.fasta, args.targets, args.regions, sequence_length=args.sequence_length,
            target_length=args.target_length or 896, max_shift=args.max_shift, blacklist=args.blacklist,
            transform=args.transform or "basenji", workers=args.workers, splits=splits, restart=args.restart,
            progress=not args.no_progress, nonfinite_targets=args.nonfinite_targets)
    else:
        from .data.producers.prepare import prepare

        for flag, value in (("--regions", args.regions), ("--blacklist", args.blacklist),
                            ("--target-length", args.target_length), ("--transform", args.transform)):
            if value is not None:
                raise UserError(f"{flag} goes with --targets (bigWigs); with --basenji the BED is --bed "
                                f"and the targets are the records'")
        manifest = prepare(
            out=args.out, organism=args.organism, fasta=args.fasta, basenji=args.basenji, bed=args.bed,
            sequence_length=args.sequence_length, max_shift=args.max_shift,
            splits=splits, workers=args.workers, records_per_file=args.records_per_file,
            max_mismatch_rate=args.max_mismatch_rate, restart=args.restart, progress=not args.no_progress,
            nonfinite_targets=args.nonfinite_targets, bin_size=args.bin_size)
    counts = ", ".join(f"{split} {info['count']}" for split, info in manifest["splits"].items())
    print(f"{args.out}: {manifest['organism']} store complete ({counts}; window {manifest['window']} bp, "
          f"targets {manifest['target_length']} x {manifest['num_targets']})")


def _cmd_regions(args: argparse.Namespace) -> None:
    from .data.producers.regions import run_regions

    run_regions(args.fasta, args.length, args.stride, args.valid_chroms, args.test_chroms, args.max_n, args.blacklist)


def _cmd_train(args: argparse.Namespace) -> None:
    from .train.finetune import load_run_config
    from .train.trainer import train

    result = train(load_run_config(args.config, args.overrides), resume=args.resume)
    if result and int(os.environ.get("RANK", 0)) == 0:  # every rank has the (all-reduced) result
        print(" ".join(f"{k}={v:.4f}" for k, v in result.items() if k.endswith("pearson_r")))


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from .evaluate import run_evaluate

    summary = run_evaluate(args.checkpoint, args.split, args.out, tta=args.tta, batch_size=args.batch_size,
                           max_batches=args.max_batches, device=args.device, stores=args.store,
                           collective_timeout_s=args.collective_timeout_s, compile=args.compile)
    if summary:
        for organism, values in summary["organisms"].items():
            print(f"{organism}: pearson_r {values['pearson_r']:.4f}, r2 {values['r2']:.4f}, "
                  f"poisson_loss {values['poisson_loss']:.4f}")
            by_assay = ", ".join(f"{name} {r:.4f}" for name, r in values.get("pearson_r_by_assay", {}).items())
            if by_assay:
                print(f"  pearson_r by assay: {by_assay}")
        print(f"wrote {args.out}/summary.json, tracks-*.csv and evaluate-*.png")


def _cmd_predict(args: argparse.Namespace) -> None:
    from .predict import run_predict

    print(run_predict(args.checkpoint, args.fasta, args.region, args.out, organism=args.organism, tracks=args.tracks,
                      targets=args.targets, device=args.device, compile=args.compile))


def _cmd_attribute(args: argparse.Namespace) -> None:
    import numpy as np

    from .attribute import run_attribute

    s = run_attribute(
        args.checkpoint, args.fasta, args.out, region=args.region, regions=args.regions, organism=args.organism,
        tracks=args.tracks, targets=args.targets, bins=args.bins, transform=args.transform, per_track=args.per_track,
        maps_per_backward=args.maps_per_backward,
        method=args.method, ism_region=args.ism_region, steps=args.steps, mean_center=args.mean_center, rc=args.rc,
        plot=args.plot, device=args.device, bf16=args.bf16, batch_size=args.batch_size, chunk_size=args.chunk_size,
        quiet=args.quiet, force=args.force, collective_timeout_s=args.collective_timeout_s)
    if s is None:
        return
    maps = f", {s['maps']} maps each" if s["maps"] > 1 else ""
    print(f"{s['method']}: {s['regions']} region(s), {s['span']:,} bases scored each{maps}")
    if s["method"] == "integrated-gradients":
        print(f"  convergence delta (sum of attributions - (target - target at the baseline)): largest "
              f"|{np.abs(s['delta']).max():.3g}| against targets up to {np.abs(s['prediction']).max():.3g}")
    if s["skipped"]:
        print(f"  skipped {s['skipped']} position(s) that are not A, C, G or T (NaN in the output)")
    print(f"wrote {', '.join(s['written'])}")


def score_options(args: argparse.Namespace):
    """score-variants' flags as the command's typed parameters."""
    from dataclasses import fields

    from .variants import ScoreOptions

    return ScoreOptions(**{f.name: getattr(args, f.name) for f in fields(ScoreOptions) if hasattr(args, f.name)})


def _cmd_score_variants(args: argparse.Namespace) -> None:
    from .variants import score_variants

    s = score_variants(score_options(args))
    if s is not None:
        notes = [f"skipped {s['symbolic']} symbolic allele(s)"] if s["symbolic"] else []
        if s["flipped"]:
            notes.append(f"flipped {s['flipped']} whose ALT is the FASTA's allele (scored from it to REF)")
        if s["ref_mismatch"]:
            verb = "skipped" if args.ref_mismatch in ("skip", "flip-skip") else "kept"
            notes.append(f"{verb} {s['ref_mismatch']} REF mismatch(es)")
        if s["renamed"]:
            notes.append(f"chromosomes named as the FASTA names them: {s['renamed']}")
        if args.genes:
            notes.append(f"{s['genes']} variant-gene pairs")
        rate = s["scored"] / s["seconds"] if s["seconds"] > 0 else 0.0
        print(f"scored {s['variants']} variants ({s['scored']} here, {s['windows']} windows, {rate:.2f} variants/s)"
              f"{''.join('; ' + n for n in notes)}; wrote {s['out']}")


def _cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(args.out, steps=args.steps, nproc=args.nproc, device=args.device, seed=args.seed)


def _cmd_plot(args: argparse.Namespace) -> None:
    from .plot_command import run_plot

    written = run_plot(args.checkpoint, args.out, store=args.store, split=args.split, sample=args.sample,
                       fasta=args.fasta, region=args.region, organism=args.organism, tracks=args.tracks)
    print(f"wrote {written}")


CONFIG_POINTER = ("Config options (model., data., train.): `enformer-train config [--config F] [section.key=value ...]` "
                  "prints every one with its meaning and default.")


def _scoring_run_arguments(p: argparse.ArgumentParser, force: str) -> None:
    """--force (its help), --bf16, --quiet, --device and the collective timeout: the flags shared by the
    commands that score many windows in resumable chunks under torchrun."""
    p.add_argument("--force", action="store_true", help=force)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (GPUs)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    _collective_timeout_argument(p)


def _compile_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compile", action="store_true",
                   help="run the model under torch.compile (torch >= 2.5): the first batch compiles (minutes at the "
                        "paper's size), then faster; for long runs. On a CPU glibc then keeps freed memory for reuse "
                        "(faster, a higher peak; ENFORMER_TRAIN_KEEP_FREED_MEMORY=0: not)")


def _collective_timeout_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--collective-timeout-s", type=float, default=600.0,
                   help="under torchrun: a rank that waits longer for the others exits with a line naming them (default 600)")


def _add_config(sub) -> None:
    p = sub.add_parser("config", help="print the resolved config: every option with its meaning and default")
    p.add_argument("--config", help="YAML config to resolve (default: the paper's recipe)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="e.g. train.steps=1000")
    p.set_defaults(func=_cmd_config)


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="synthetic barnyard -> store -> tiny Enformer on 2 processes -> plots")
    p.add_argument("--out", default="enformer-demo", help="work folder (default: ./enformer-demo)")
    p.add_argument("--steps", type=int, help="training steps (default: configs/tiny.yaml's)")
    p.add_argument("--nproc", type=int, default=2, help="training processes (torchrun; default 2)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--seed", type=int, help="training seed: initial weights and batch order (default: configs/tiny.yaml's, 0)")
    p.set_defaults(func=_cmd_demo)


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="parameters, FLOPs and activation memory of a model config")
    p.add_argument("--config", help="YAML file with a `model:` section (default: the paper's model)")
    p.set_defaults(func=_cmd_info)


def _add_convert(sub) -> None:
    p = sub.add_parser("convert", help="import Sonnet or enformer-pytorch weights as safetensors")
    p.add_argument("src", help="Sonnet tf.train.Checkpoint prefix, enformer-pytorch state dict (.pt/.bin/.safetensors) or folder")
    p.add_argument("dst", help="output .safetensors file")
    p.add_argument("--format", choices=["auto", "sonnet", "enformer-pytorch"], default="auto")
    p.add_argument("--force", action="store_true", help="replace DST if it exists")
    p.add_argument("--target-length", type=int,
                   help="output bins the model is built for (default: the source folder's config.json, else 896)")
    p.set_defaults(func=_cmd_convert)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train (one process, or under torchrun on one node or many)")
    p.add_argument("--config", help="YAML config (model:, data:, train:); defaults are the paper's recipe")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in train.run_dir")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="e.g. train.steps=1000")
    p.set_defaults(func=_cmd_train)


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="metrics of a checkpoint on a split, per track (CSV) and summary (JSON)")
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint file, a run folder (its latest), or a model file (.safetensors, with --store)")
    p.add_argument("--store", action="append", metavar="[HEAD=]STORE",
                   help="a prepared store to evaluate on (repeatable); its organism picks the head, or HEAD=STORE. "
                        "Default: the stores the run was trained on")
    p.add_argument("--split", default="test")
    p.add_argument("--out", required=True, help="folder for summary.json and tracks-<organism>.csv")
    p.add_argument("--tta", action="store_true", help="average over reverse complement and shifts of -1, 0, 1")
    p.add_argument("--batch-size", type=int, help="per rank (default: the training batch per rank)")
    p.add_argument("--max-batches", type=int, help="per rank; default the whole split")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    _compile_argument(p)
    _collective_timeout_argument(p)
    p.set_defaults(func=_cmd_evaluate)


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="predicted tracks for a region of a genome")
    p.add_argument("--checkpoint", required=True, help="training checkpoint, run folder, or .safetensors weights")
    p.add_argument("--fasta", required=True, help="genome FASTA, plain or bgzipped (.fa.gz); its index is built if missing")
    p.add_argument("--region", required=True, help="CHROM:START-END (0-based, end exclusive), e.g. chr1:1000000-1196608")
    p.add_argument("--organism", help="head to predict (default: the model's first)")
    p.add_argument("--tracks", help="track indices and/or description substrings, comma-separated")
    p.add_argument("--targets", help="targets.txt for track descriptions (default: the training store's)")
    p.add_argument("--out", required=True, help=".npz, or .bw for bigWig (needs pyBigWig)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    _compile_argument(p)
    p.set_defaults(func=_cmd_predict)


def _add_score_variants(sub) -> None:
    p = sub.add_parser(
        "score-variants", help="variant effects (SAD, SAR, baskerville's statistics, gene scores) on every track "
                               "from a VCF; under torchrun too",
        description="Scores each alternative allele of a VCF against its reference. Windows: for VCF POS (1-based), "
                    "pos0 = POS - 1 and the reference window is the FASTA's [pos0 - L/2, pos0 + L/2) (L = the "
                    "model's input length, N past chromosome ends), so the variant's first base is at index L/2 "
                    "(L/2 - 1 with --center basenji); the alternative window puts ALT in place of REF there and "
                    "keeps length L by trimming (insertions) or extending from the FASTA (deletions) its right side "
                    "(the project's rule; basenji and baskerville place indels otherwise: docs/variants.md). "
                    "Multi-allelic records are split; symbolic alleles (<DEL>, *, breakends) are skipped and "
                    "counted. A stopped run resumes from OUT.partial/ when started again with the same options.")
    p.add_argument("--checkpoint", required=True, help="training checkpoint, run folder, or .safetensors weights")
    p.add_argument("--fasta", required=True, help="the genome the VCF's positions refer to")
    p.add_argument("--vcf", required=True, help="VCF, plain or gzip/bgzip (.vcf.gz); chromosome names such as 1 "
                                                "are read as the FASTA's chr1 (and back) where that is unambiguous")
    p.add_argument("--organism", help="head to score (default: the model's first)")
    p.add_argument("--out", required=True, help=".h5 (Basenji's sad.h5 layout, float16) or .tsv (a column per stat and track)")
    p.add_argument("--tracks", help="track indices and/or description substrings, comma-separated (default: all)")
    p.add_argument("--targets", help="targets.txt for track names and strand pairs (default: the training store's)")
    p.add_argument("--stats", default="SAD",
                   help="comma-separated (default SAD): SAD (= baskerville's SUM: sum over bins of alt - ref), SAR "
                        "(= logSUM: of log2(alt+1) - log2(ref+1)), SUM, logSUM, sqrtSUM, SAX (alt - ref at the bin of "
                        "largest |alt - ref|), D1, logD1, sqrtD1 (L1 norms over bins), D2, logD2, sqrtD2 (L2 norms), "
                        "JS, logJS (baskerville's symmetrised divergence of the bin profiles), REF, ALT (every bin's "
                        "prediction; .h5 and --tracks only). Each is the mean over --shifts")
    p.add_argument("--shifts", default="0", help="window shifts to average over, comma-separated, e.g. --shifts=-1,0,1 "
                                                 "(with '=' when the first is negative): the window moves, the variant "
                                                 "with it (default 0)")
    p.add_argument("--tta", action="store_true", help="average each prediction over the forward and reverse-complement strands")
    p.add_argument("--sum-strands", action="store_true",
                   help="a stranded track and its partner in targets.txt become one column (scores summed; D2s as the "
                        "root of summed squares; JS on the pair as one profile); target_ids name both")
    p.add_argument("--genes", metavar="GTF", help="also score genes: for each variant and each gene with a TSS in the "
                                                  "output, SED and logSED over the gene's TSS bins (h5 group genes, or "
                                                  "OUT.genes.tsv); plain or gzipped GTF")
    p.add_argument("--percentiles", action="store_true",
                   help="baskerville's percentiles and {stat}_pct datasets: each track's score distribution (.h5)")
    p.add_argument("--batch-size", type=int, default=4, help="windows per forward pass, per rank (default 4)")
    p.add_argument("--ref-mismatch", choices=["error", "skip", "warn", "flip", "flip-skip"], default="error",
                   help="a REF that differs from the FASTA: stop (default), skip the variant, score it with REF "
                        "written in and warn, or flip it where the FASTA has ALT (scored from the FASTA's allele to "
                        "REF, so still ALT - REF) and stop (flip) or skip (flip-skip) where it has neither")
    p.add_argument("--center", choices=["project", "basenji"], default="project",
                   help="where the variant's first base sits in the window: index L/2 (default, as the Enformer "
                        "colab) or L/2 - 1 (basenji's and baskerville's, to reproduce their numbers)")
    p.add_argument("--chunk-size", type=int, default=256, help="variants per resumable unit of work (default 256)")
    _compile_argument(p)
    _scoring_run_arguments(p, force="replace an existing --out (and a stale OUT.partial/)")
    p.set_defaults(func=_cmd_score_variants)


def _add_attribute(sub) -> None:
    p = sub.add_parser(
        "attribute", help="contribution scores: which bases drive a prediction (gradient x input, ISM, "
                          "integrated gradients); under torchrun too",
        description="The target is the mean prediction over --tracks x --bins (default the three centre output "
                    "bins). input-grad (default) is the Enformer colab's contribution_input_grad: the gradient of "
                    "the target with respect to the one-hot input, times the input, summed over the bases. ism "
                    "scores every base of a span against its three alternatives: target(alt) - target(ref). "
                    "integrated-gradients is captum's, from a uniform 0.25 baseline. Output per region: per-base "
                    "scores and hypothetical [L, 4] scores (.npz, .h5), or the per-base scores as a bigWig. A "
                    "stopped --regions run resumes from OUT.partial/ when started again with the same options.")
    p.add_argument("--checkpoint", required=True, help="training checkpoint, run folder, or .safetensors weights")
    p.add_argument("--fasta", required=True, help="genome FASTA, plain or bgzipped (.fa.gz)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--region", help="CHROM:START-END (0-based, end exclusive), at most the model's input length; "
                                        "the model's window is centred on it")
    where.add_argument("--regions", metavar="BED", help="many regions (chrom, start, end); with --method ism each is "
                                                        "the span mutated, all of one length")
    p.add_argument("--organism", help="head (default: the model's first)")
    p.add_argument("--tracks", help="track indices and/or description substrings, comma-separated (default: all)")
    p.add_argument("--targets", help="targets.txt for track descriptions and strand pairs (default: the training store's)")
    p.add_argument("--bins", help="output bins of the target, indices and ranges, e.g. 447-449,500 (default: the "
                                  "three centre bins)")
    p.add_argument("--transform", choices=["log1p"], help="take log(1 + prediction) before the mean")
    p.add_argument("--per-track", action="store_true", help="one map per selected track instead of one for their mean")
    p.add_argument("--maps-per-backward", type=int, default=1,
                   help="input-grad with --per-track: tracks' maps computed this many at a time in one batched "
                        "backward (torch.func); 1 (default): a backward per track, the faster on a CPU")
    p.add_argument("--method", default="input-grad", help="input-grad (default), ism or integrated-gradients")
    p.add_argument("--ism-region", help="with --method ism and --region: CHROM:START-END inside the window "
                                        "(default: the region)")
    p.add_argument("--steps", type=int, default=50, help="integrated-gradients: steps from the baseline (default 50)")
    p.add_argument("--mean-center", action="store_true", help="input-grad: subtract the mean of the gradient over "
                                                             "the four bases before multiplying by the input")
    p.add_argument("--rc", action="store_true", help="average with the reverse-complement window's map (stranded "
                                                     "tracks swapped with their partners in targets.txt)")
    p.add_argument("--out", required=True, help=".npz, .h5 or .bw (per-base scores; with --per-track one per track)")
    p.add_argument("--plot", help="PNG: the prediction, |contribution| pooled to the bin size and a sequence logo "
                                  "(the first region)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (ISM, integrated gradients)")
    p.add_argument("--chunk-size", type=int, default=16, help="regions per resumable unit of work (default 16)")
    _scoring_run_arguments(p, force="replace an existing --out / --plot (and a stale OUT.partial/)")
    p.set_defaults(func=_cmd_attribute)


def _add_plot(sub) -> None:
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


def _add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="build the 196,608-bp training store from a FASTA and Basenji records "
                                         "(--basenji) or bigWigs (--targets)")
    from .data.formats.intervals import SPLITS
    from .data.producers.prepare import DEFAULT_SEQUENCE_LENGTH

    p.add_argument("--organism", required=True, help="name of the organism / head, e.g. human or mouse")
    p.add_argument("--fasta", required=True, help="genome FASTA (hg38.ml.fa, mm10.ml.fa), plain or bgzipped (.fa.gz); its index is built if missing")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--basenji", metavar="DIR",
                        help="Basenji organism folder (statistics.json, targets.txt, tfrecords/); local or a fsspec URL such as gs://")
    from .data.formats.coverage import TRANSFORMS

    source.add_argument("--targets", metavar="TARGETS_TXT",
                        help="a targets.txt naming bigWig files (Basenji's columns: index, identifier, file, clip, "
                             "clip_soft, scale, sum_stat, description), with --regions")
    p.add_argument("--regions", metavar="BED", help="with --targets: chrom, start, end, split (train/valid/test), "
                                                    "all regions one length; `enformer-train regions` makes one")
    p.add_argument("--target-length", type=int,
                   help="with --targets: bins of 128 bp per region, centred on it (default 896)")
    p.add_argument("--blacklist", metavar="BED", help="with --targets: intervals clipped to the target span's median "
                                                      "coverage (widened 20 bp each side, as Basenji does)")
    p.add_argument("--transform", choices=TRANSFORMS,
                   help="with --targets: basenji (default: the Enformer-era data's, baskerville's transform_old) "
                        "or baskerville (its current one). baskerville's dataset-wide clip_pct pass is not applied")
    p.add_argument("--bed", help="with --basenji: sequences.bed (default: DIR/sequences.bed)")
    p.add_argument("--out", required=True, metavar="STORE", help="store folder to write")
    p.add_argument("--context", "--sequence-length", dest="sequence_length", type=int, default=DEFAULT_SEQUENCE_LENGTH,
                   help="the model's input length in bp, sequence_length (default 196608)")
    p.add_argument("--max-shift", type=int, default=3, help="margin kept each side for shift augmentation (default 3)")
    p.add_argument("--splits", default=",".join(SPLITS), help="comma-separated splits (default train,valid,test)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="processes converting files in parallel (0: in this process; default: all cores)")
    p.add_argument("--records-per-file", type=int,
                   help="optional check: records in every TFRecord file but a split's last (each file's "
                        "records are counted; without this option any number is taken)")
    p.add_argument("--max-mismatch-rate", type=float, default=0.01,
                   help="fraction of rows whose record may differ from the FASTA before prepare stops (default 0.01)")
    p.add_argument("--bin-size", type=int, default=128,
                   help="--basenji: bp per target bin in the store, the model's output bin (default 128, "
                        "Enformer's); records at a finer pool width that divides it have their bins summed")
    p.add_argument("--nonfinite-targets", choices=["refuse", "zero"], default="refuse",
                   help="a NaN or infinite target: refuse it, naming record and track (default), or store it "
                        "as 0 and report the count per track")
    p.add_argument("--restart", action="store_true", help="discard an unfinished store in STORE and start again")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_prepare)


def _add_regions(sub) -> None:
    p = sub.add_parser("regions", help="tile a genome into a regions BED (chrom, start, end, split) on stdout")
    p.add_argument("--fasta", required=True, help="genome FASTA, plain or bgzipped (.fa.gz); its index is built if missing")
    p.add_argument("--length", type=int, required=True, help="region length in bp, e.g. 131072")
    p.add_argument("--stride", type=int, help="bp between region starts (default: --length, no overlap)")
    p.add_argument("--valid-chroms", nargs="*", default=[], metavar="CHROM", help="chromosomes held out for validation")
    p.add_argument("--test-chroms", nargs="*", default=[], metavar="CHROM", help="chromosomes held out for testing")
    p.add_argument("--max-n", type=float, default=0.35,
                   help="skip a region whose N and blacklisted bases exceed this fraction (default 0.35)")
    p.add_argument("--blacklist", metavar="BED", help="blacklisted intervals (e.g. ENCODE's), counted as N")
    p.set_defaults(func=_cmd_regions)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="enformer-train", description="Train Enformer in PyTorch.",
                                     epilog=CONFIG_POINTER)
    parser.add_argument("--version", action="version", version=f"enformer-train {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    _add_config(sub)
    _add_demo(sub)
    _add_info(sub)
    _add_convert(sub)
    _add_train(sub)
    _add_evaluate(sub)
    _add_predict(sub)
    _add_score_variants(sub)
    _add_attribute(sub)
    _add_plot(sub)
    _add_prepare(sub)
    _add_regions(sub)
    for name, subparser in sub.choices.items():
        if name != "config":
            subparser.epilog = CONFIG_POINTER
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        print(f"enformer-train {args.command}: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 1)
    except Stopped as e:
        print(f"enformer-train {args.command}: {e}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print(f"enformer-train {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
