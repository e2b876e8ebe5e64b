"""Recipe loading and the CLI's one-line errors."""

from __future__ import annotations

import pytest

from conftest import write_recipe
from quantkit.cli.main import main
from quantkit.errors import RecipeError
from quantkit.recipe import load_recipe, resolve_recipe, shipped_recipes

GOOD = """\
name: demo
model:
  source: embedded:smollm2-135m
exclude:
  - pattern: "*down_proj*"
    reason: testing
"""


def test_every_shipped_recipe_loads():
    recipes = shipped_recipes()
    assert {"smollm2-135m", "gemma3-270m", "grm-27b", "qwen3.6-27b", "qwen3.6-35b-a3b", "qwen3.5-122b-a10b",
            "qwen3-coder-next", "nex-n2-mini", "nemotron-3-super", "nemotron-3-nano", "gemma-4-31b",
            "gemma-4-26b-a4b"} <= set(recipes)
    for name, path in recipes.items():
        r = load_recipe(path)
        assert r.name == name, f"{path}: name must equal the file name"
        assert r.model.trust_remote_code is False
        for rule in r.exclude:
            assert len(rule.reason) > 10, f"{name}: every exclusion carries its reason"


def test_resolution_order(tmp_path):
    assert resolve_recipe("smollm2-135m").name == "smollm2-135m"
    assert resolve_recipe(str(write_recipe(tmp_path / "r.yaml", GOOD))).name == "demo"
    adhoc = resolve_recipe("Qwen/Qwen3.6-27B")
    assert adhoc.model.source == "Qwen/Qwen3.6-27B" and adhoc.exclude == []


def test_unknown_recipe_lists_known_ones():
    with pytest.raises(RecipeError) as e:
        resolve_recipe("no-such-recipe")
    assert "smollm2-135m" in e.value.message and "grm-27b" in e.value.message


@pytest.mark.parametrize("text, expected", [
    (GOOD + "bogus_key: 1\n", "r.yaml:7: bogus_key: unknown key"),
    (GOOD.replace("    reason: testing\n", ""), "r.yaml:5: exclude.0.reason: Field required"),
    (GOOD + "calibration:\n  samples: 0\n", "r.yaml:8: calibration.samples"),
    ("name: demo\nmodel: [unclosed\n", "r.yaml:3: invalid YAML"),
    (GOOD.replace('"*down_proj*"', '"re:(bad"'), "r.yaml:5: exclude.0.pattern: invalid regular expression"),
    (GOOD + "backend: llmcompressor\nformats: [modelopt]\n", "cannot write format 'modelopt'"),
    ("- just\n- a list\n", "must be a YAML mapping"),
])
def test_malformed_recipes_give_file_and_line(tmp_path, text, expected):
    p = write_recipe(tmp_path / "r.yaml", text)
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    assert expected in e.value.message


def test_cli_errors_are_one_line_with_next_step(tmp_path, capsys):
    p = write_recipe(tmp_path / "r.yaml", GOOD + "bogus_key: 1\n")
    code = main(["plan", str(p)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3
    assert len(err) == 1 and err[0].startswith("error: ") and "bogus_key" in err[0] and "->" in err[0]
    assert "Traceback" not in "\n".join(err)


def test_cli_unknown_recipe_exit_code_and_message(capsys):
    assert main(["plan", "nope-not-a-recipe"]) == 3
    err = capsys.readouterr().err
    assert "shipped recipes:" in err and "quantkit recipes" in err


def test_cli_missing_model_dir(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    assert main(["plan", str(tmp_path / "m")]) == 3
    assert "without config.json" in capsys.readouterr().err


def test_cli_strict_pattern_that_matches_nothing(capsys):
    code = main(["plan", "smollm2-135m", "--exclude", "*does_not_exist*", "--strict"])
    assert code == 3
    assert "matched no quantizable module" in capsys.readouterr().err


def test_cli_debug_shows_traceback():
    with pytest.raises(RecipeError):
        main(["--debug", "plan", "nope-not-a-recipe"])


def test_cli_help_has_examples(capsys):
    for cmd in (["--help"], ["quantize", "--help"], ["plan", "--help"]):
        assert main(cmd) == 0
        assert "Examples" in capsys.readouterr().out


def test_recipes_command_one_line_each(capsys):
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(shipped_recipes())
    assert any(line.startswith("grm-27b") and "gdn" in line for line in lines)


def test_cli_usage_error_exit_code(capsys):
    assert main(["quantize", "smollm2-135m", "--samples", "zero"]) == 3
    assert main(["no-such-command"]) == 3
    assert main(["quantize", "smollm2-135m", "--format", "gguf", "--out", "/nonexistent/x"]) == 3
    assert "unknown format" in capsys.readouterr().err
