"""Progress of long commands: tqdm on a terminal, a plain line a minute on a log file."""
import io

from enformer_train.progress import LogProgress, progress


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_log_progress_writes_a_line_a_minute_with_rate_and_eta():
    clock, stream = _Clock(), io.StringIO()
    bar = LogProgress(1000, "prepare human", "seq", stream=stream, clock=clock)
    for _ in range(30):  # 10 seq every 10 s: 1 seq/s
        clock.now += 10
        bar.update(10)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert lines == [
        "prepare human: 60/1000 seq (6%), 1 seq/s, elapsed 0:01:00, ETA 0:15:40",
        "prepare human: 120/1000 seq (12%), 1 seq/s, elapsed 0:02:00, ETA 0:14:40",
        "prepare human: 180/1000 seq (18%), 1 seq/s, elapsed 0:03:00, ETA 0:13:40",
        "prepare human: 240/1000 seq (24%), 1 seq/s, elapsed 0:04:00, ETA 0:12:40",
        "prepare human: 300/1000 seq (30%), 1 seq/s, elapsed 0:05:00, ETA 0:11:40",
        "prepare human: 300/1000 seq (30%), 1 seq/s, elapsed 0:05:00, ETA 0:11:40",  # close: the final state
    ]
    assert "\r" not in stream.getvalue()


def test_terminal_gets_a_bar_and_a_file_gets_lines(tmp_path):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    bar = progress(10, "evaluate human", "batch", stream=Terminal())
    assert type(bar).__name__ == "tqdm"
    bar.close()
    with open(tmp_path / "job.log", "w") as log:
        with progress(10, "evaluate human", "batch", stream=log) as bar:
            assert isinstance(bar, LogProgress)
            bar.update(10)
    assert (tmp_path / "job.log").read_text().startswith("evaluate human: 10/10 batch (100%)")
    off = progress(10, "x", "y", enabled=False)
    off.update(3)
    off.close()
