"""The one error type a user can act on: every stage raises it for bad input, missing or
corrupt files and refused requests; CLIs print it as one ``error:`` line and exit 2."""
from __future__ import annotations


class OfaserveError(Exception):
    """An error the user can fix; CLIs print it as one line and exit non-zero."""
