"""The one exception family a user of tinylens can cause.

Every error that bad input can trigger (a wrong config, malformed tokens, an unknown name, a missing or
corrupt file) is a :class:`TinylensError`. Its message says what was wrong, the value received and what
to do instead; the CLI prints it on one line and exits with code 2. Anything else escaping tinylens is a
bug in tinylens.
"""

from __future__ import annotations

from collections.abc import Iterable


class TinylensError(ValueError):
    """Base class: bad input from the user, reported with a message that says how to fix it."""


class ConfigError(TinylensError):
    """A configuration value or file is invalid."""


class UnknownNameError(TinylensError):
    """A name (task, preset, hook, run, field) is not one of the known choices."""


class TokenError(TinylensError):
    """A text or token sequence does not follow the task's format."""


class RunNotFoundError(UnknownNameError):
    """No run of that name exists in the workspace."""


class CheckpointError(TinylensError):
    """A checkpoint or model file is missing, truncated, corrupt or of the wrong kind."""


def unknown_name(what: str, name: object, choices: Iterable[object]) -> UnknownNameError:
    """Build the standard "unknown X 'y'; valid choices: a, b, c" error."""
    listed = ", ".join(str(c) for c in choices) or "(none)"
    return UnknownNameError(f"unknown {what} {name!r}; valid choices: {listed}")


def quote(text: object, limit: int = 40) -> str:
    """``repr`` of user input for an error message, cut to ``limit`` characters.

    A long value keeps its first ``limit`` characters and says how long it was, so that a
    10,000-digit operand makes a one-line message, not a 10,000-character one:
    ``quote("1" * 10_000)`` → ``'1111…' (10000 characters)``.
    """
    text = str(text)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text)} characters)"


class Interrupted(Exception):  # noqa: N818 (a clean stop, not an error)
    """Work stopped early by Ctrl-C after saving what it needs to continue (the CLI exits 130).

    Not a :class:`TinylensError`: nothing was wrong with the input.
    """
