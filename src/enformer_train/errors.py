"""The one exception type for user mistakes: bad files, bad records, bad options.

The command line prints its message on one line and exits non-zero; anything else is a bug and
keeps its traceback.
"""
import signal


class UserError(Exception):
    """A problem the user can fix. The message names the file, line or record and what to do."""


class Stopped(Exception):
    """Training stopped by a signal (preemption, Ctrl-C) after saving a checkpoint."""

    def __init__(self, signum: int, checkpoint: str):
        super().__init__(f"stopped by {signal.Signals(signum).name}; checkpoint {checkpoint}; continue with --resume")
        self.signum = signum
