"""Training augmentation as small pure functions on arrays: shift and reverse complement.

Sequences are uint8 codes (A=0, C=1, G=2, T=3, N=4). A store keeps, per sample, a *window*: the
model's input of sequence_length bases with a margin of at least `max_shift` extra bases on each side,
so a shift cuts real genome from the margin instead of padding. `window_margin` is the one place that
margin is computed and checked.
Shift convention: shift s takes the window s bases further along the chromosome (to the right for
s > 0). A shift of at most a few bases stays inside one 128-bp bin, so the targets do not move.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COMPLEMENT = np.array([3, 2, 1, 0, 4], dtype=np.uint8)  # A<->T, C<->G, N stays N
# Salt of the augmentation's random stream (seed, epoch, sample, AUGMENT_SALT): keeps it apart from
# loader.EPOCH_ORDER_SALT's, which is seeded from the same (seed, epoch).
AUGMENT_SALT = 0xA06


def reverse_complement(codes: np.ndarray) -> np.ndarray:
    """[..., length] codes -> the reverse complement, [..., length]."""
    return COMPLEMENT[np.asarray(codes)[..., ::-1]]


def reverse_targets(targets: np.ndarray, strand_pair: np.ndarray | None = None) -> np.ndarray:
    """[..., positions, tracks] targets of a reverse-complemented sequence: positions reversed, and
    each stranded track takes its partner's values (strand_pair from targets.strand_pairs)."""
    out = targets[..., ::-1, :]
    if strand_pair is not None and not np.array_equal(strand_pair, np.arange(len(strand_pair))):
        out = out[..., strand_pair]
    return out


def window_margin(window: int, sequence_length: int, max_shift: int = 0) -> int:
    """Bases of a `window`-bp window on each side of its centred `sequence_length`-bp input.

    ValueError unless window - sequence_length is even (the input is centred exactly) and leaves at
    least `max_shift` bases each side (room for shifts of up to max_shift).
    """
    margin = window - sequence_length
    if margin < 0 or margin % 2 or margin // 2 < max_shift:
        raise ValueError(f"cannot centre {sequence_length} bases in a window of {window} with shifts of up to "
                         f"{max_shift}: the difference must be even and at least {2 * max_shift}")
    return margin // 2


def crop(window: np.ndarray, length: int, shift: int = 0) -> np.ndarray:
    """[..., window] codes -> the centred [..., length] slice moved by `shift` bases.

    The margin (window - length) must be even, so the crop is centred exactly, and at least 2 |shift|.
    """
    margin = window_margin(window.shape[-1], length)
    if abs(shift) > margin:
        raise ValueError(f"shift {shift} is more than the margin of {margin} bases each side")
    return window[..., margin + shift:margin + shift + length]


def augment(window: np.ndarray, targets: np.ndarray, length: int, shift: int, reverse: bool,
            strand_pair: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One training sample: crop [window] codes to [length] moved by `shift`, then reverse complement
    sequence and targets ([positions, tracks]) when `reverse`."""
    sequence = crop(window, length, shift)
    if reverse:
        return reverse_complement(sequence), reverse_targets(targets, strand_pair)
    return sequence, targets


@dataclass(frozen=True)
class Augment:
    """Random shift in [-max_shift, max_shift] and reverse complement with probability `reverse_prob`.

    Choices are a function of (seed, epoch, sample index) only, so they do not depend on the number
    of ranks or workers and are the same after a resume.
    """

    max_shift: int = 3
    reverse_prob: float = 0.5

    def choose(self, seed: int, epoch: int, index: int) -> tuple[int, bool]:
        rng = np.random.default_rng([seed, epoch, index, AUGMENT_SALT])
        shift = int(rng.integers(-self.max_shift, self.max_shift + 1))
        return shift, bool(rng.random() < self.reverse_prob)


@dataclass(frozen=True)
class FixedView:
    """One view of every sample, the same (shift, reverse) for all: evaluation's (0, False), or one
    of the views test-time averaging takes the mean over."""

    shift: int = 0
    reverse: bool = False

    @property
    def max_shift(self) -> int:
        return abs(self.shift)

    def choose(self, seed: int, epoch: int, index: int) -> tuple[int, bool]:
        return self.shift, self.reverse
