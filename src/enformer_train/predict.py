"""`enformer-train predict`: tracks for any genomic region from a checkpoint or a weights file.

The region is centred in the model's input (sequence_length bp, N past chromosome ends); a region
longer than one output span (target_length x bin_size bp) is tiled with adjacent windows.
"""
from __future__ import annotations

import re

import numpy as np
import torch

from .compiling import for_inference
from .data.genome import Genome
from .errors import UserError
from .infer import load, output_span, predict_region, select_tracks, targets_for

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


def write_bigwig(path: str, chrom: str, chrom_length: int, span_start: int, bin_size: int, values: np.ndarray) -> None:
    import pyBigWig

    bw = pyBigWig.open(path, "w")
    bw.addHeader([(chrom, chrom_length)])
    starts = span_start + bin_size * np.arange(len(values))
    keep = (starts >= 0) & (starts + bin_size <= chrom_length)
    bw.addEntries(chrom, int(starts[keep][0]), values=[float(v) for v in values[keep]], span=bin_size, step=bin_size)
    bw.close()


_BIGWIG = (".bw", ".bigwig", ".bigWig")


def run_predict(args) -> str:
    """Predict, write --out, and return what was predicted and written (lines for the user)."""
    if not args.out.endswith((".npz", *_BIGWIG)):
        raise UserError(f"--out {args.out}: unknown format; name the file .npz (NumPy arrays) or .bw (bigWig)")
    device = torch.device("cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu")
    loaded = load(args.checkpoint, device)
    model = loaded.model
    head = args.organism or next(iter(model.heads))
    if head not in model.heads:
        raise UserError(f"--organism {head!r}: the model's heads are {', '.join(model.heads)}")
    chrom, start, end = parse_region(args.region)
    genome = Genome(args.fasta)
    if chrom not in genome:
        raise UserError(f"{args.fasta}: no sequence named {chrom!r} (region {args.region})")
    if start >= genome.lengths[chrom]:
        raise UserError(f"region {args.region}: starts past the end of {chrom} ({genome.lengths[chrom]:,} bp)")
    targets = targets_for(loaded, head, args.targets)
    call = for_inference(model) if getattr(args, "compile", False) else model
    pred, span_start = predict_region(call, genome, chrom, start, end, head, show_progress=True)
    tracks = select_tracks(args.tracks, pred.shape[1], targets)
    pred = pred[:, tracks]
    bin_size = model.config.bin_size
    out = args.out
    written = [out]
    descriptions = [targets[i].get("description", "") if targets else "" for i in tracks]
    if out.endswith(_BIGWIG):
        try:
            import pyBigWig  # noqa: F401
        except ImportError:
            raise UserError("bigWig output needs pyBigWig (pip install pyBigWig); or write .npz") from None
        if len(tracks) == 1:
            write_bigwig(out, chrom, genome.lengths[chrom], span_start, bin_size, pred[:, 0])
        else:
            stem = out.rsplit(".", 1)[0]
            written = [f"{stem}.track{t}.bw" for t in tracks]
            for k, name in enumerate(written):
                write_bigwig(name, chrom, genome.lengths[chrom], span_start, bin_size, pred[:, k])
    else:
        np.savez(out, predictions=pred, tracks=np.array(tracks), descriptions=np.array(descriptions),
                 chrom=chrom, start=span_start, end=span_start + pred.shape[0] * bin_size, bin_size=bin_size,
                 organism=head)
    span_end = span_start + pred.shape[0] * bin_size
    lines = [f"predicted {chrom}:{span_start:,}-{span_end:,} ({pred.shape[0]} bins of {bin_size} bp: the region "
             f"{chrom}:{start:,}-{end:,} tiled with whole output windows of {output_span(model):,} bp), "
             f"{len(tracks)} {head} track{'s' if len(tracks) != 1 else ''}"]
    if span_start < 0 or span_end > genome.lengths[chrom]:
        lines.append(f"  bins past the ends of {chrom} (0-{genome.lengths[chrom]:,}) saw N and are not genome")
    if len(written) == 1:
        lines.append(f"wrote {written[0]}")
    else:
        lines.append(f"wrote {len(written)} bigWigs, one per track: {written[0]} ... {written[-1]}")
    return "\n".join(lines)
