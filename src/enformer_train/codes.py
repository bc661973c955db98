"""The one-hot table of base codes (A=0, C=1, G=2, T=3, N=4), the project's one alphabet.

Sequences travel as uint8 codes as far as the device (data/formats/genome.py makes them from FASTA); this
table turns them into the model's [..., length, 4] input, N being all zeros. numpy only, so that
data/ reads files without torch; model/enformer.py's `one_hot` makes its device copy from it.
"""
from __future__ import annotations

import numpy as np

ONE_HOT = np.eye(5, 4, dtype=np.uint8)  # [5, 4]: row c is the one-hot of code c; row 4 (N) is zeros


def one_hot(codes: np.ndarray) -> np.ndarray:
    """[..., length] codes -> [..., length, 4] uint8 one-hot; N is all zeros."""
    return ONE_HOT[np.asarray(codes)]
