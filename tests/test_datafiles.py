"""Every shipped data file (recipes/, validate/, calib/) loads through the one YAML loader with its
schema, and a mistake in any kind of data file is reported as file:line: field, in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from quantkit.calib import load_spec
from quantkit.engines.profiles import load_profiles
from quantkit.errors import UsageError
from quantkit.probes.knowledge import load_bank
from quantkit.probes.logscan import load_patterns
from quantkit.probes.suites import load_suite
from quantkit.recipe import load_recipe
from quantkit.resources import data_dir


def _loader(kind: str, path: Path):
    """The loader of a shipped data file, decided by where it lives: a file no loader reads would be
    a file nothing checks."""
    if kind == "recipes":
        return load_recipe
    if kind == "calib":
        return lambda p: load_spec(str(p))
    if path.parent.name == "knowledge":
        return load_bank
    return {"engines": load_profiles, "logscan": load_patterns}.get(path.stem, lambda p: load_suite(str(p)))


SHIPPED = sorted((kind, p) for kind in ("recipes", "validate", "calib")
                 for p in data_dir(kind).rglob("*") if p.suffix in (".yaml", ".yml"))


def test_every_kind_of_data_file_is_shipped():
    names = {f"{kind}/{p.relative_to(data_dir(kind))}" for kind, p in SHIPPED}
    assert {"validate/engines.yaml", "validate/logscan.yaml", "validate/smoke.yaml", "validate/knowledge/en-basic.yaml",
            "calib/bundled-en.yaml", "recipes/smollm2-135m.yaml"} <= names


@pytest.mark.parametrize("kind,path", SHIPPED, ids=[f"{k}/{p.name}" for k, p in SHIPPED])
def test_every_shipped_data_file_loads(kind, path):
    assert _loader(kind, path)(path)


def test_shipped_engine_profiles_and_log_patterns():
    profiles = load_profiles()
    assert {"vllm", "vllm-cpu", "endpoint"} <= set(profiles)
    assert all(p.name == name for name, p in profiles.items()) and profiles["endpoint"].is_endpoint
    patterns = load_patterns()
    assert patterns.report and {b.severity for b in patterns.bad} <= {"error", "warning"}


@pytest.mark.parametrize("text,expected", [
    ("vllm:\n  command: [x]\n  quant_flag: {}\n", r"engines.yaml:3: vllm.quant_flag: unknown key"),
    ("vllm:\n  description: d\n", r"engines.yaml:1: vllm.command: Field required"),
    ("vllm:\n  command: x: y\n", r"engines.yaml:2: invalid YAML"),
])
def test_bad_engine_profile_names_file_line_and_field(tmp_path, text, expected):
    bad = tmp_path / "engines.yaml"
    bad.write_text(text)
    with pytest.raises(UsageError, match=expected) as exc:
        load_profiles(bad)
    assert "\n" not in exc.value.message and exc.value.hint


@pytest.mark.parametrize("text,expected", [
    ("report:\n  - {name: q, pattern: 'quantization=(\\w+'}\n",
     r"logscan.yaml:2: report.0.pattern: not a regular expression"),
    ("bad:\n  - {name: n, severity: fatal, pattern: x, why: y}\n", r"logscan.yaml:2: bad.0.severity: Input should be"),
    ("bad:\n  - {name: n, severity: error, pattern: x}\n", r"logscan.yaml:2: bad.0.why: Field required"),
])
def test_bad_log_patterns_name_file_line_and_field(tmp_path, text, expected):
    bad = tmp_path / "logscan.yaml"
    bad.write_text(text)
    with pytest.raises(UsageError, match=expected):
        load_patterns(bad)
