"""The exceptions trl-mtp raises on purpose for its users; the CLI turns them into one line (see `trl_mtp.cli`)."""

from __future__ import annotations


class UserInputError(ValueError):
    """Bad input (an argument, a file, a checkpoint): the message names the bad value and how to fix it.

    A ValueError, so that library callers catching ValueError keep working."""


class Interrupted(Exception):
    """A run stopped by Ctrl-C after keeping what it had done; the message says how to resume."""
