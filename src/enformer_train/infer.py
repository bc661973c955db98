"""Inference, one path for every command: the input windows around genomic positions, the tracks
and head a command asks for, and predictions averaged over strands and shifts (a model from any
saved form comes from saved/).

`predict`, `evaluate`, `plot`, the demo and variant scoring all go through here, so a window is
placed, padded and mapped back to the forward strand the same way everywhere.

Windows: a model of input length L predicts target_length bins of bin_size bp in the middle of its
input; the `flank` = (L - target_length x bin_size) / 2 bp on each side are context only. Positions
off a chromosome read as N (code 4).
"""
from __future__ import annotations

import contextlib
import difflib
import math
import os

import numpy as np
import torch

from .data.augment import COMPLEMENT, FixedView, window_margin
from .data.formats.targets import read_targets
from .data.store import targets_path
from .errors import UserError
from .model import Enformer
from .progress import progress
from .saved import Loaded


def choose_head(model: Enformer, organism: str | None) -> str:
    """The head `organism` names (--organism), or the model's first; an unknown one is a UserError."""
    head = organism or next(iter(model.heads))
    if head not in model.heads:
        raise UserError(f"--organism {head!r}: the model's heads are {', '.join(model.heads)}")
    return head


def targets_for(loaded: Loaded, head: str, path: str | None = None) -> list[dict] | None:
    """Rows of targets.txt for `head`: `path` (--targets) when given, else the training store's when
    it is still there, else None (tracks are then known by index only)."""
    if path:
        if not os.path.exists(path):
            raise UserError(f"--targets {path}: no such file")
        return read_targets(path)
    store_targets = targets_path(loaded.stores[head]) if head in loaded.stores else None
    return read_targets(store_targets) if store_targets and os.path.exists(store_targets) else None


# -- tracks -------------------------------------------------------------------------------------


def select_tracks(spec: str | None, num_tracks: int, targets: list[dict] | None) -> list[int]:
    """Track indices from `--tracks`: '0,5,12' or descriptions ('CAGE:liver' matches descriptions
    containing it, case-insensitive), in the order given, without repeats; every track when empty."""
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
            close = difflib.get_close_matches(item, [row.get("description", "") for row in targets], n=3, cutoff=0.5)
            raise UserError(f"--tracks {item!r}: no track description contains it"
                            + (f"; close: {', '.join(map(repr, close))}" if close else ""))
        chosen.extend(hits)
    return list(dict.fromkeys(chosen))


# -- windows ------------------------------------------------------------------------------------


def output_span(model: Enformer) -> int:
    """bp covered by the model's output bins."""
    return model.config.target_length * model.config.bin_size


def flank(model: Enformer) -> int:
    """bp of input on each side of the output span."""
    return (model.config.sequence_length - output_span(model)) // 2


def output_windows(model: Enformer, start: int, end: int) -> tuple[list[int], int]:
    """Input window starts whose output spans cover [start, end), centred on it, and the start of
    the first output span. A region longer than one span gets adjacent windows."""
    span = output_span(model)
    n = max(1, math.ceil((end - start) / span))
    span_start = (start + end) // 2 - n * span // 2
    return [span_start + k * span - flank(model) for k in range(n)], span_start


def fetch_windows(genome, chrom: str, starts: list[int], length: int) -> np.ndarray:
    """[len(starts), length] uint8 codes of chrom from each start (N off the chromosome's ends)."""
    return np.stack([genome.fetch(chrom, s, s + length) for s in starts])


# -- strands and shifts -------------------------------------------------------------------------


def tta_views(tta: bool, max_shift: int = 1) -> list[FixedView]:
    """The views a prediction averages over: the forward strand alone, or with `tta` the forward
    and reverse-complement strands at shifts 0, -1 and +1 (where the margin allows a shift)."""
    if not tta:
        return [FixedView(0, False)]
    shifts = [0] + ([-1, 1] if max_shift >= 1 else [])
    return [FixedView(s, rc) for s in shifts for rc in (False, True)]


def to_forward_strand(pred: torch.Tensor, reverse: bool, strand_pair: torch.Tensor | None) -> torch.Tensor:
    """[batch, positions, tracks] predictions of a view back on the forward strand: a reverse
    complement's positions are reversed and its stranded tracks swapped with their partners."""
    if not reverse:
        return pred
    pred = pred.flip(1)
    return pred if strand_pair is None else pred[..., strand_pair]


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


@torch.no_grad()
def predict_codes(model: Enformer, codes: np.ndarray | torch.Tensor, head: str, views: list[FixedView] | None = None,
                  strand_pair: torch.Tensor | None = None, autocast: bool = False) -> torch.Tensor:
    """Predictions [batch, target_length, tracks] (float32, on the model's device) for windows of
    codes [batch, sequence_length + 2 m], m >= the largest shift of `views`, each window centred on
    the model's input: the mean over the views, each mapped back to the forward strand."""
    views = views or [FixedView(0, False)]
    device = next(model.parameters()).device
    codes = torch.as_tensor(np.asarray(codes) if not isinstance(codes, torch.Tensor) else codes)
    length = model.config.sequence_length
    margin = window_margin(codes.shape[-1], length, max(v.max_shift for v in views))
    complement = torch.as_tensor(COMPLEMENT)
    total = None
    for view in views:
        offset = margin + view.shift
        x = codes[..., offset:offset + length]
        if view.reverse:
            x = complement[x.flip(-1).long()]
        with _autocast(device, autocast):
            pred = model(x.to(device), head=head).float()
        pred = to_forward_strand(pred, view.reverse, strand_pair)
        total = pred if total is None else total + pred
    return total / len(views)


def predict_region(model: Enformer, genome, chrom: str, start: int, end: int, head: str,
                   batch_size: int = 2, show_progress: bool = False) -> tuple[np.ndarray, int]:
    """[bins, tracks] float32 predictions over the output spans centred on chrom:start-end, and the
    first span's start (the region is tiled with adjacent windows when longer than one span)."""
    if chrom not in genome:
        raise UserError(f"{genome.path}: no sequence named {chrom!r}")
    starts, span_start = output_windows(model, start, end)
    out = []
    with progress(len(starts), "predict", "window", enabled=show_progress and len(starts) > 1) as bar:
        for i in range(0, len(starts), batch_size):
            codes = fetch_windows(genome, chrom, starts[i:i + batch_size], model.config.sequence_length)
            out.append(predict_codes(model, codes, head).cpu())
            bar.update(len(codes))
    return torch.cat(out).flatten(0, 1).numpy(), span_start
