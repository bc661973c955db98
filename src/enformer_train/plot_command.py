"""`enformer-train plot`: one region's tracks as a PNG, measured (from a store) above predicted."""
from __future__ import annotations

import os

import numpy as np

from .errors import UserError


def run_plot(args) -> str:
    from .data.store import targets_path
    from .data.targets import read_targets
    from .plots import plot_tracks
    from .infer import load, predict_codes, predict_region, select_tracks

    loaded = load(args.checkpoint)
    model, stores = loaded.model, loaded.stores
    organism = args.organism or next(iter(model.heads))
    if organism not in model.heads:
        raise UserError(f"--organism {organism!r}: the model's heads are {', '.join(model.heads)}")
    bin_size = model.config.bin_size
    if args.store:
        from .data.augment import window_margin
        from .data.store import Store

        store = Store(args.store, args.split)
        if not 0 <= args.sample < len(store):
            raise UserError(f"{args.store}: --sample {args.sample} outside the {args.split} split (0-{len(store) - 1})")
        try:
            margin = window_margin(store.window, model.config.sequence_length)
        except ValueError as e:
            raise UserError(f"{args.store}: windows of {store.window} bp do not fit the model's input "
                            f"({model.config.sequence_length} bp): {e}") from None
        codes = store.read_sequence(args.sample)[margin:store.window - margin]
        predicted = predict_codes(model, codes[None], organism)[0].numpy()
        measured = store.read_target(args.sample).astype(np.float32)
        chrom, start, _, _ = store.regions()[args.sample]
        start += margin + (model.config.sequence_length - model.config.target_length * bin_size) // 2
        targets = targets_path(args.store)
        title = f"{organism} {args.split} sample {args.sample}"
        region = None
    elif args.fasta and args.region:
        from .data.genome import Genome
        from .predict import parse_region

        chrom, begin, end = parse_region(args.region)
        genome = Genome(args.fasta)
        if chrom not in genome:
            raise UserError(f"{args.fasta}: no sequence named {chrom!r}")
        predicted, start = predict_region(model, genome, chrom, begin, end, organism)
        measured = None
        targets = targets_path(stores[organism]) if organism in stores else None
        title = f"{organism} {args.region}"
        region = (begin, end)
    else:
        raise UserError("give --store (measured and predicted) or --fasta and --region (predicted)")
    rows = read_targets(targets) if targets and os.path.exists(targets) else None
    tracks = select_tracks(args.tracks, predicted.shape[1], rows)
    names = [f"track {t}" + (f": {rows[t].get('description', '')}" if rows else "") for t in tracks]
    span = f"{chrom}:{start:,}-{start + bin_size * predicted.shape[0]:,}"
    plot_tracks(None if measured is None else measured[:, tracks], predicted[:, tracks], names,
                f"{title} ({span}, {bin_size}-bp bins)", args.out, start=start, bin_size=bin_size, chrom=chrom,
                region=region)
    return args.out
