"""The one loader for quantkit's YAML data files (recipes, probe suites, knowledge banks, engine
profiles, log patterns, calibration specs): strict pydantic schemas, and every error names the file,
the line and the field, in one line, with the next step. tests/test_datafiles.py loads every shipped
file through it."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from quantkit.errors import QuantkitError, UsageError, first_line

__all__ = ["load_yaml_model", "load_yaml_mapping", "line_of"]

M = TypeVar("M", bound=BaseModel)


def line_of(text: str, loc: tuple) -> int | None:
    """Best-effort line number of a pydantic error location in the YAML text."""
    node = yaml.compose(text)
    line = None
    for key in loc:
        if node is None:
            break
        if isinstance(node, yaml.MappingNode):
            nxt = None
            for k, v in node.value:
                if k.value == key:
                    line, nxt = k.start_mark.line + 1, v
                    break
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            break
    return line


def load_yaml_mapping(path: Path, what: str, error: type[QuantkitError] = UsageError,
                      hint: str | None = None) -> tuple[dict, str]:
    """(data, text) of a YAML file whose top level must be a mapping."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} file not found: {path}", hint=hint)
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or first_line(exc) or "unreadable"
        raise error(f"{where}: invalid YAML: {problem}", hint="fix the YAML syntax at that line") from exc
    if not isinstance(data, dict):
        raise error(f"{path}: a {what} must be a YAML mapping", hint=hint)
    return data, text


def load_yaml_model(path: Path, model: type[M], what: str, error: type[QuantkitError] = UsageError,
                    hint: str | None = None, extra: dict | None = None) -> M:
    """Load `path` into the strict schema `model`; `extra` fields are added before validation."""
    data, text = load_yaml_mapping(path, what, error, hint)
    try:
        return model.model_validate({**data, **(extra or {})})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        line = line_of(text, loc)
        where = f"{path}:{line}" if line else str(path)
        field = ".".join(str(x) for x in loc) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise error(f"{where}: {field}: {msg}{more}", hint=hint or f"fix the {what} at that line") from exc
