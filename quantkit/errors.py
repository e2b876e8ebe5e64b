"""The error types the library raises. The CLI's one error boundary turns them into a
single line plus the next step (`hint`); nothing else in the library prints errors."""

from __future__ import annotations

import sys
from typing import NamedTuple

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
    "EXIT_INTERNAL",
    "HUB_ERRORS",
    "HubProblem",
    "hub_problem",
]

# An unexpected exception, i.e. a quantkit bug (EX_SOFTWARE in sysexits.h): not 1, so CI can tell a
# crash from a check that failed.
EXIT_INTERNAL = 70


def first_line(exc: BaseException | str, limit: int | None = None) -> str:
    """The first line of an exception's message (or a string), "" for an empty one: error messages
    are one line, and `str(exc).splitlines()[0]` raises on an empty message."""
    line = next(iter(str(exc).splitlines()), "")
    return line[:limit] if limit else line


class QuantkitError(Exception):
    """Base for every error quantkit expects. `hint` says what the user can do next.

    Exit codes (the same for every command, so CI can gate on them): 0 success, 1 a failed
    check or step (verification, backend, sanity), 2 a serving engine failed to start or died,
    3 bad input (recipe, pattern, model source, calibration spec, command-line usage); 70
    (`EXIT_INTERNAL`) an unexpected exception, i.e. a quantkit bug; 130/143/129 interrupted."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.message


class UsageError(QuantkitError):
    """Bad input that is not a recipe: a data file (probe suite, knowledge bank, engine profile, log patterns), a
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


class HubProblem(NamedTuple):
    """What a Hugging Face Hub error means for the user: exit code, one line, the next step."""

    exit_code: int
    message: str
    hint: str


_LOGIN = "log in with `hf auth login` or set HF_TOKEN"

# The one table of Hub errors (class names in huggingface_hub.errors), most specific first: the
# first class the error is an instance of decides. Exit 3 when the id, the revision, the access or
# the environment is wrong (the user can fix it), 1 when the Hub itself failed a request.
HUB_ERRORS: tuple[tuple[str, int, str, str], ...] = (
    ("GatedRepoError", 3, "the Hub repository is gated", f"accept its terms on its Hub page, then {_LOGIN}"),
    ("DisabledRepoError", 3, "the Hub repository is disabled", "use another repository"),
    ("RepositoryNotFoundError", 3, "Hub repository not found (or private)",
     f"check the id (org/name); for a private repository {_LOGIN}"),
    ("RevisionNotFoundError", 3, "revision not found on the Hub", "check --revision: a branch, tag or commit of it"),
    ("LocalEntryNotFoundError", 3, "not in the local Hub cache and the Hub could not be reached (offline?)",
     "connect to the network (and unset HF_HUB_OFFLINE), or download the model and pass its directory"),
    ("OfflineModeIsEnabled", 3, "the Hub is needed but HF_HUB_OFFLINE is set",
     "unset HF_HUB_OFFLINE, or pass a local directory"),
    ("EntryNotFoundError", 3, "file not found in the Hub repository",
     "check that the repository holds a complete checkpoint (config.json, *.safetensors)"),
    ("LocalTokenNotFoundError", 3, "no Hugging Face token", _LOGIN),
    ("HFValidationError", 3, "not a valid Hub id", "use org/name, or pass an existing local directory"),
    ("HfHubHTTPError", 1, "a Hub request failed",
     f"try again later (https://status.huggingface.co); on 401/403 {_LOGIN}"),
)


def _chain(exc: BaseException | None):
    """`exc` and the exceptions it was raised from or during (transformers wraps Hub errors in OSError)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)  # as a traceback shows


def _where(err: BaseException) -> str:
    """The repository id or the URL a Hub error is about, and the HTTP status when there is one."""
    response = getattr(err, "response", None)
    what = getattr(err, "repo_id", None) or (str(getattr(response, "url", "")) or None)
    status = getattr(response, "status_code", None)
    return " ".join(filter(None, [what, f"(HTTP {status})" if status else None]))


def hub_problem(exc: BaseException) -> HubProblem | None:
    """The HUB_ERRORS row of the first Hub error in `exc`'s chain, or None. Never imports
    huggingface_hub: without it loaded no Hub error can have been raised."""
    module = sys.modules.get("huggingface_hub.errors")
    if module is None:
        return None
    rows = [(getattr(module, name, None), code, msg, hint) for name, code, msg, hint in HUB_ERRORS]
    for err in _chain(exc):
        for cls, code, msg, hint in rows:
            if cls is not None and isinstance(err, cls):
                where = _where(err)
                return HubProblem(code, f"{msg}: {where}" if where else msg, hint)
    return None
