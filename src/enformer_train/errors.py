"""The one exception type for user mistakes: bad files, bad records, bad options.

The command line prints its message on one line and exits non-zero; anything else is a bug and
keeps its traceback.
"""


class UserError(Exception):
    """A problem the user can fix. The message names the file, line or record and what to do."""
