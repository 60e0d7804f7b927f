"""Placeholder: this command's stage is being built in this change (replaced before landing)."""

from mlan.errors import MlanError


def evaluate() -> None:
    """Not available yet."""
    raise MlanError("this command is not available yet")
