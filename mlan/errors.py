"""The one exception type for mistakes a user can make (bad config, missing file, bad data).

The CLI turns an `MlanError` into one readable line on stderr and exit code 2; any other
exception is a bug in mlan and keeps its traceback.
"""


class MlanError(Exception):
    """A user error: the message is complete on its own (it names the file, field or row)."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty), for
    quoting a library's reason inside a one-line `MlanError`."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
