"""`enformer-train predict`: tracks for any genomic region from a checkpoint or a weights file.

The region is centred in the model's input (sequence_length bp, N past chromosome ends); a region
longer than one output span (target_length x bin_size bp) is tiled with adjacent windows.
"""
from __future__ import annotations

import re

import numpy as np

from .compiling import for_inference
from .data.formats.coverage import BigWigWriter, require_bigwig_writer
from .data.formats.genome import Genome
from .distributed import choose_device
from .errors import UserError
from .infer import choose_head, output_span, predict_region, select_tracks, targets_for
from .saved import load

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
    """One track's bins as a bigWig over `chrom` (bins past its ends left out)."""
    with BigWigWriter(path, [(chrom, chrom_length)]) as bw:
        bw.steps(chrom, span_start, values, bin_size)


_BIGWIG = (".bw", ".bigwig", ".bigWig")


def run_predict(checkpoint: str, fasta: str, region: str, out: str, organism: str | None = None,
                tracks: str | None = None, targets: str | None = None, device: str = "auto",
                compile: bool = False) -> str:
    """`enformer-train predict`: predict `region` (CHROM:START-END), write `out` (.npz or .bw), and
    return what was predicted and written (lines for the user)."""
    if not out.endswith((".npz", *_BIGWIG)):
        raise UserError(f"--out {out}: unknown format; name the file .npz (NumPy arrays) or .bw (bigWig)")
    loaded = load(checkpoint, choose_device(device))
    model = loaded.model
    head = choose_head(model, organism)
    chrom, start, end = parse_region(region)
    genome = Genome(fasta)
    if chrom not in genome:
        raise UserError(f"{fasta}: no sequence named {chrom!r} (region {region})")
    if start >= genome.lengths[chrom]:
        raise UserError(f"region {region}: starts past the end of {chrom} ({genome.lengths[chrom]:,} bp)")
    rows = targets_for(loaded, head, targets)
    call = for_inference(model) if compile else model
    pred, span_start = predict_region(call, genome, chrom, start, end, head, show_progress=True)
    chosen = select_tracks(tracks, pred.shape[1], rows)
    pred = pred[:, chosen]
    bin_size = model.config.bin_size
    written = [out]
    descriptions = [rows[i].get("description", "") if rows else "" for i in chosen]
    if out.endswith(_BIGWIG):
        require_bigwig_writer()
        if len(chosen) == 1:
            write_bigwig(out, chrom, genome.lengths[chrom], span_start, bin_size, pred[:, 0])
        else:
            stem = out.rsplit(".", 1)[0]
            written = [f"{stem}.track{t}.bw" for t in chosen]
            for k, name in enumerate(written):
                write_bigwig(name, chrom, genome.lengths[chrom], span_start, bin_size, pred[:, k])
    else:
        np.savez(out, predictions=pred, tracks=np.array(chosen), descriptions=np.array(descriptions),
                 chrom=chrom, start=span_start, end=span_start + pred.shape[0] * bin_size, bin_size=bin_size,
                 organism=head)
    span_end = span_start + pred.shape[0] * bin_size
    lines = [f"predicted {chrom}:{span_start:,}-{span_end:,} ({pred.shape[0]} bins of {bin_size} bp: the region "
             f"{chrom}:{start:,}-{end:,} tiled with whole output windows of {output_span(model):,} bp), "
             f"{len(chosen)} {head} track{'s' if len(chosen) != 1 else ''}"]
    if span_start < 0 or span_end > genome.lengths[chrom]:
        lines.append(f"  bins past the ends of {chrom} (0-{genome.lengths[chrom]:,}) saw N and are not genome")
    if len(written) == 1:
        lines.append(f"wrote {written[0]}")
    else:
        lines.append(f"wrote {len(written)} bigWigs, one per track: {written[0]} ... {written[-1]}")
    return "\n".join(lines)
