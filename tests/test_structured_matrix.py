"""Instruction / tool-call probes (answer checking, judging against the baseline) and the
deployment-configuration matrix (profile configurations, the comparison rule), without an engine;
the engine runs are in tests/test_validate_vllm.py and bench/structured.md, bench/matrix.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from quantkit.engines.profiles import get_profile
from quantkit.errors import UsageError
from quantkit.judge import _structured_checks
from quantkit.matrix import MatrixRun, compare
from quantkit.probes.structured import StructuredProbe, check_answer, request_body
from quantkit.probes.suites import load_suite

TOOLS = [{"name": "get_weather", "description": "weather", "parameters": {"type": "object", "properties":
          {"city": {"type": "string"}}, "required": ["city"]}},
         {"name": "set_timer", "description": "timer", "parameters": {"type": "object", "properties":
          {"minutes": {"type": "integer"}}, "required": ["minutes"]}}]


def test_tool_answer_must_parse_validate_and_carry_the_values():
    p = StructuredProbe(id="t", kind="tool", messages=[{"role": "user", "content": "Rain in Tokyo?"}], tools=TOOLS,
                        expect={"name": "get_weather", "arguments.city": "tokyo"})
    assert check_answer(p, '{"name": "get_weather", "arguments": {"city": "Tokyo, Japan"}}') == (True, None)
    ok, why = check_answer(p, '{"name": "set_timer", "arguments": {"minutes": 3}}')
    assert not ok and "expected 'get_weather'" in why
    ok, why = check_answer(p, '{"name": "get_weather", "arguments": {"town": "Tokyo"}}')
    assert not ok and "does not validate" in why
    ok, why = check_answer(p, '{"name": "get_weather", "arguments": {"city": "To')  # cut off
    assert not ok and "not JSON" in why
    body = request_body(p)
    assert body["messages"][0]["role"] == "system" and "get_weather" in body["messages"][0]["content"]
    schema = body["response_format"]["json_schema"]["schema"]
    assert [s["properties"]["name"]["const"] for s in schema["anyOf"]] == ["get_weather", "set_timer"]


def test_json_answer_numbers_and_alternatives():
    p = StructuredProbe(id="j", kind="json", messages=[{"role": "user", "content": "x"}],
                        schema={"type": "object", "properties": {"age": {"type": "integer"}, "city": {"type": "string"}}},
                        expect={"age": 31, "city": ["berlin", "berlín"]})
    assert check_answer(p, '{"age": 31, "city": "Berlín"}')[0]
    assert not check_answer(p, '{"age": 32, "city": "Berlin"}')[0]
    assert not check_answer(p, '{"age": true, "city": "Berlin"}')[0]  # a bool is not the number 1
    with pytest.raises(ValueError):
        StructuredProbe(id="bad", kind="json", messages=[{"role": "user", "content": "x"}])


def _res(passed: dict[str, bool]) -> list[dict]:
    return [{"id": k, "passed": v, "why": None if v else "wrong"} for k, v in passed.items()]


def test_structured_judged_against_what_the_baseline_gets_right():
    spec = load_suite("smoke").structured
    base = {"structured": _res({"a": True, "b": True, "c": True, "d": False})}
    [ok] = _structured_checks(spec, {"structured": _res({"a": True, "b": False, "c": True, "d": False})}, base)
    assert ok.passed and ok.value == 0.6667 and ok.baseline_value == 3 and ok.margin > 0
    [bad] = _structured_checks(spec, {"structured": _res({"a": False, "b": False, "c": True, "d": True})}, base)
    assert bad.passed is False and bad.value == 0.3333 and "gained 1" in bad.detail and bad.margin < 0
    [none] = _structured_checks(spec, {"structured": _res({"a": True})}, None)
    assert none.passed is None and "no baseline" in none.detail
    [uninformative] = _structured_checks(spec, {"structured": _res({"d": True})}, {"structured": _res({"d": False})})
    assert uninformative.passed is None and "not informative" in uninformative.detail


def test_profile_configurations_change_the_command_and_environment():
    p = get_profile("vllm-cpu")
    argv = dict(model=Path("m"), name="n", port=1, max_model_len=64, fmt=None, python="py")
    assert "--enforce-eager" in p.argv(**argv, config="eager")
    assert "--enforce-eager" not in p.argv(**argv, config="compiled")
    assert p.environment("emulation-kernel")["QUANTKIT_CPU_NVFP4_KERNEL"] == "vllm-emulation"
    assert get_profile("vllm").argv(**argv, config="marlin")[-4:] == ["--linear-backend", "marlin", "--moe-backend",
                                                                     "marlin"]
    assert p.environment("faulty-kernel")["QUANTKIT_CPU_NVFP4_FAULT"] == "nibble-order"
    with pytest.raises(UsageError):
        p.argv(**argv, config="warp-drive")
    assert get_profile("vllm").configs["tp2"].gpus == 2


def _run(name, ppl, blocks=None, greedy=None, **kw):
    return MatrixRun(name, perplexity=ppl, blocks=blocks or [[64 * 3.0, 64], [64 * 3.1, 64]],
                     greedy=greedy or {"a": "Paris.", "b": "100 degrees"}, **kw)


def test_matrix_compares_each_configuration_with_the_reference():
    ref = _run("eager", 20.0)
    same = _run("compiled", 20.01, blocks=[[64 * 3.0005, 64], [64 * 3.1, 64]])
    wrong = _run("faulty-kernel", 4000.0, blocks=[[64 * 8.0, 64], [64 * 8.5, 64]], greedy={"a": "!!!!", "b": "!!!!"})
    tp = MatrixRun("tp2", checked=False, why_not="needs 2 GPUs (a CPU-only engine)")
    dead = MatrixRun("broken", error="engine exited: ValueError: no kernel")
    pairs = {p.config: p for p in compare([ref, same, wrong, tp, dead])}
    assert pairs["compiled"].passed and pairs["compiled"].log_ppl_change < 0.001
    assert pairs["compiled"].greedy_same == 2
    assert pairs["faulty-kernel"].passed is False and pairs["faulty-kernel"].log_ppl_change > 5
    assert pairs["faulty-kernel"].greedy_same == 0 and pairs["faulty-kernel"].max_block_nll_change == 5.4
    assert pairs["tp2"].passed is None and "not checked" in pairs["tp2"].detail  # never a pass
    assert pairs["broken"].passed is False and "failed to serve" in pairs["broken"].detail
