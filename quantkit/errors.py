"""The error types the library raises. The CLI's one error boundary turns them into a
single line plus the next step (`hint`); nothing else in the library prints errors."""

from __future__ import annotations

__all__ = [
    "QuantkitError",
    "UsageError",
    "RecipeError",
    "ModelSourceError",
    "PatternError",
    "PlanError",
    "BackendError",
    "VerificationError",
    "CalibrationError",
    "EngineError",
    "PublishError",
    "first_line",
]


def first_line(exc: BaseException | str, limit: int | None = None) -> str:
    """The first line of an exception's message (or a string), "" for an empty one: error messages
    are one line, and `str(exc).splitlines()[0]` raises on an empty message."""
    line = next(iter(str(exc).splitlines()), "")
    return line[:limit] if limit else line


class QuantkitError(Exception):
    """Base for every error quantkit expects. `hint` says what the user can do next.

    Exit codes (the same for every command, so CI can gate on them): 0 success, 1 a failed
    check or step (verification, backend, sanity), 2 a serving engine failed to start or died,
    3 bad input (recipe, pattern, model source, calibration spec, command-line usage)."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.message


class UsageError(QuantkitError):
    """Bad input that is not a recipe: a data file (probe suite, knowledge bank, engine profile), a
    command-line value, a missing environment."""

    exit_code = 3


class RecipeError(UsageError):
    """A recipe could not be found, parsed or validated."""

    exit_code = 3


class ModelSourceError(QuantkitError):
    """The model (config, weights, tokenizer) could not be located or read."""

    exit_code = 3


class PatternError(QuantkitError):
    """An exclusion pattern is malformed, or (with --strict) matched nothing."""

    exit_code = 3


class PlanError(QuantkitError):
    """The quantization plan is impossible (e.g. nothing left to quantize)."""

    exit_code = 3


class CalibrationError(QuantkitError):
    """Calibration data could not be prepared."""

    exit_code = 3


class BackendError(QuantkitError):
    """A quantization backend is missing or failed."""


class VerificationError(QuantkitError):
    """A produced checkpoint failed quantkit's own checks; it was not written to --out."""


class EngineError(QuantkitError):
    """A serving engine failed to start, died, or never became healthy."""

    exit_code = 2


class PublishError(QuantkitError):
    """Publishing was refused (no passing validation, wrong metadata) or failed."""
