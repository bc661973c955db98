"""`enformer-train predict`: tracks for any genomic region from a checkpoint or a weights file.

The region is centred in the model's input (sequence_length bp, N past chromosome ends); a region
longer than one output span (target_length x bin_size bp) is tiled with adjacent windows.
"""
from __future__ import annotations

import os
import re

import numpy as np
import torch

from .data.genome import Genome
from .data.targets import read_targets
from .errors import UserError
from .infer import load, predict_region

_REGION = re.compile(r"^([^:\s]+):([\d,]+)-([\d,]+)$")


def parse_region(text: str) -> tuple[str, int, int]:
    """'chr1:1,000,000-1,196,608' -> ('chr1', 1000000, 1196608), 0-based half-open as BED."""
    m = _REGION.match(text.strip())
    if not m:
        raise UserError(f"region {text!r}: expected CHROM:START-END, e.g. chr1:1000000-1196608")
    chrom, start, end = m.group(1), int(m.group(2).replace(",", "")), int(m.group(3).replace(",", ""))
    if start >= end:
        raise UserError(f"region {text!r}: start must be below end")
    return chrom, start, end


def select_tracks(spec: str | None, num_tracks: int, targets: list[dict] | None) -> list[int]:
    """'0,5,12' or descriptions ('CAGE:liver' matches descriptions containing it, case-insensitive)."""
    if not spec:
        return list(range(num_tracks))
    chosen: list[int] = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        if item.isdigit():
            index = int(item)
            if index >= num_tracks:
                raise UserError(f"--tracks: track {index} does not exist; the head has {num_tracks} tracks (0-{num_tracks - 1})")
            chosen.append(index)
            continue
        if targets is None:
            raise UserError(f"--tracks {item!r}: choosing by description needs targets.txt; give --targets FILE")
        hits = [i for i, row in enumerate(targets) if item.lower() in row.get("description", "").lower()]
        if not hits:
            raise UserError(f"--tracks {item!r}: no track description contains it")
        chosen.extend(hits)
    return list(dict.fromkeys(chosen))


def write_bigwig(path: str, chrom: str, chrom_length: int, span_start: int, bin_size: int, values: np.ndarray) -> None:
    import pyBigWig

    bw = pyBigWig.open(path, "w")
    bw.addHeader([(chrom, chrom_length)])
    starts = span_start + bin_size * np.arange(len(values))
    keep = (starts >= 0) & (starts + bin_size <= chrom_length)
    bw.addEntries(chrom, int(starts[keep][0]), values=[float(v) for v in values[keep]], span=bin_size, step=bin_size)
    bw.close()


def run_predict(args) -> str:
    device = torch.device("cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu")
    loaded = load(args.checkpoint, device)
    model, stores = loaded.model, loaded.stores
    head = args.organism or next(iter(model.heads))
    if head not in model.heads:
        raise UserError(f"--organism {head!r}: the model's heads are {', '.join(model.heads)}")
    chrom, start, end = parse_region(args.region)
    genome = Genome(args.fasta)
    if chrom not in genome:
        raise UserError(f"{args.fasta}: no sequence named {chrom!r} (region {args.region})")
    targets_path = args.targets or (os.path.join(stores[head], "targets.txt") if head in stores else None)
    targets = read_targets(targets_path) if targets_path and os.path.exists(targets_path) else None
    pred, span_start = predict_region(model, genome, chrom, start, end, head)
    tracks = select_tracks(args.tracks, pred.shape[1], targets)
    pred = pred[:, tracks]
    bin_size = model.config.bin_size
    out = args.out
    descriptions = [targets[i].get("description", "") if targets else "" for i in tracks]
    if out.endswith((".bw", ".bigwig", ".bigWig")):
        try:
            import pyBigWig  # noqa: F401
        except ImportError:
            raise UserError("bigWig output needs pyBigWig (pip install pyBigWig); or write .npz") from None
        if len(tracks) == 1:
            write_bigwig(out, chrom, genome.lengths[chrom], span_start, bin_size, pred[:, 0])
        else:
            stem = out.rsplit(".", 1)[0]
            for k, t in enumerate(tracks):
                write_bigwig(f"{stem}.track{t}.bw", chrom, genome.lengths[chrom], span_start, bin_size, pred[:, k])
    else:
        np.savez(out, predictions=pred, tracks=np.array(tracks), descriptions=np.array(descriptions),
                 chrom=chrom, start=span_start, end=span_start + pred.shape[0] * bin_size, bin_size=bin_size,
                 organism=head)
    return out
