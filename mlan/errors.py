"""The one exception type for mistakes a user can make (bad config, missing file, bad data).

The CLI turns an `MlanError` into one readable line on stderr and exit code 2; any other
exception is a bug in mlan and keeps its traceback.
"""


class MlanError(Exception):
    """A user error: the message is complete on its own (it names the file, field or row)."""
