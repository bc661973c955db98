"""Set up for the whole suite before any test module imports torch's compiler, and the fixtures
several modules share."""
import getpass
import os
import tempfile
from pathlib import Path

import pytest

# torch.compile's inductor keeps the C++ kernels it builds in a cache whose key leaves out the vector
# instruction set that ATEN_CPU_CAPABILITY picks: the suite run under avx2 or default after a run at
# the machine's own instruction set loaded kernels built for another (NaN predictions under avx2,
# C++ errors under default). A cache folder of its own per capability keeps those runs honest.
_CAPABILITY = os.environ.get("ATEN_CPU_CAPABILITY")
if _CAPABILITY and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(
        tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}_{_CAPABILITY}")


@pytest.fixture
def saved_figures(monkeypatch):
    """{path: Figure} of every figure written through matplotlib's Figure.savefig during the test
    (still written), so a test asserts what a figure shows (lines' data, labels, panels), not the
    size of its PNG."""
    from matplotlib.figure import Figure

    saved = {}
    write = Figure.savefig

    def savefig(fig, fname, *args, **kwargs):
        saved[Path(fname)] = fig
        return write(fig, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return saved
