"""`enformer-train score-variants ARGS` with a fault injected, to run under torchrun: rank 1
stops itself (SIGSTOP, as a frozen node would) when it starts its STOP_AT_CHUNK-th chunk."""
import os
import signal
import sys

from enformer_train.cli import main
from enformer_train.variants import command as variants

_score, _calls = variants.Scorer.score, []


def _score_or_stop(self, chunk, *rest):
    _calls.append(len(chunk))
    if int(os.environ["RANK"]) == 1 and len(_calls) == int(os.environ["STOP_AT_CHUNK"]):
        os.kill(os.getpid(), signal.SIGSTOP)
    return _score(self, chunk, *rest)


variants.Scorer.score = _score_or_stop
sys.exit(main(["score-variants", *sys.argv[1:]]))
