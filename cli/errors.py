"""The command line's own error: a problem reported in one line, exit code 2."""

from __future__ import annotations


class CliError(Exception):
    """A problem to report in one line, exit code 2."""
