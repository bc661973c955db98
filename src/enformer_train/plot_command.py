"""`enformer-train plot`: one region's tracks as a PNG, measured (from a store) above predicted."""
from __future__ import annotations

import numpy as np

from .data.augment import window_margin
from .data.formats.genome import Genome
from .data.store import Store, track_rows
from .errors import UserError
from .infer import choose_head, flank, predict_codes, predict_region, select_tracks, targets_for
from .saved import load
from .plots import plot_tracks
from .predict import parse_region


def run_plot(checkpoint: str, out: str, store: str | None = None, split: str = "valid", sample: int = 0,
             fasta: str | None = None, region: str | None = None, organism: str | None = None,
             tracks: str | None = "0,1,2,3") -> str:
    """`enformer-train plot`: a store's sample (measured above predicted) or a genome's region
    (predicted) as a PNG at `out`; returns `out`."""
    loaded = load(checkpoint)
    model = loaded.model
    organism = choose_head(model, organism)
    bin_size = model.config.bin_size
    if store:
        data = Store(store, split)
        if not 0 <= sample < len(data):
            raise UserError(f"{store}: --sample {sample} outside the {split} split (0-{len(data) - 1})")
        try:
            margin = window_margin(data.window, model.config.sequence_length)
        except ValueError as e:
            raise UserError(f"{store}: windows of {data.window} bp do not fit the model's input "
                            f"({model.config.sequence_length} bp): {e}") from None
        codes = data.read_sequence(sample)[margin:data.window - margin]
        predicted = predict_codes(model, codes[None], organism)[0].numpy()
        measured = data.read_target(sample).astype(np.float32)
        chrom, start, _, _ = data.regions()[sample]
        start += margin + flank(model)
        rows = track_rows(data)
        title = f"{organism} {split} sample {sample}"
        span = None
    elif fasta and region:
        chrom, begin, end = parse_region(region)
        genome = Genome(fasta)
        if chrom not in genome:
            raise UserError(f"{fasta}: no sequence named {chrom!r}")
        predicted, start = predict_region(model, genome, chrom, begin, end, organism)
        measured = None
        rows = targets_for(loaded, organism)
        title = f"{organism} {region}"
        span = (begin, end)
    else:
        raise UserError("give --store (measured and predicted) or --fasta and --region (predicted)")
    rows = rows or None
    chosen = select_tracks(tracks, predicted.shape[1], rows)
    names = [f"track {t}" + (f": {rows[t].get('description', '')}" if rows else "") for t in chosen]
    shown = f"{chrom}:{start:,}-{start + bin_size * predicted.shape[0]:,}"
    plot_tracks(None if measured is None else measured[:, chosen], predicted[:, chosen], names,
                f"{title} ({shown}, {bin_size}-bp bins)", out, start=start, bin_size=bin_size, chrom=chrom,
                region=span)
    return out
