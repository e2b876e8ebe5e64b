"""Engine profiles as data (`validate/engines.yaml`): the command to start a server and the
flags a checkpoint's format needs. No engine-specific code branches."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict, RootModel

from quantkit.datafile import load_yaml_model
from quantkit.errors import UsageError
from quantkit.resources import data_dir

__all__ = ["EngineProfile", "load_profiles", "get_profile", "engine_python"]


class EngineProfile(BaseModel):
    """One engine. `name` is its key in the file, filled in by `load_profiles`."""

    model_config = ConfigDict(extra="forbid")
    name: str = ""
    description: str = ""
    command: list[str]
    env: dict[str, str] = {}
    quant_flags: dict[str, list[str]] = {}
    moe_marlin_flags: list[str] = []
    cpu_only: bool = False

    @property
    def is_endpoint(self) -> bool:
        return not self.command

    def environment(self) -> dict[str, str]:
        """`env` with {cpus} replaced by the CPUs this process may run on (e.g. "0-1")."""
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
        spec = f"{cpus[0]}-{cpus[-1]}" if cpus == list(range(cpus[0], cpus[-1] + 1)) else ",".join(map(str, cpus))
        return {k: v.replace("{cpus}", spec) for k, v in self.env.items()}

    def argv(self, *, model: Path, name: str, port: int, max_model_len: int, fmt: str | None,
             python: str, extra: list[str] = (), moe_marlin: bool = False) -> list[str]:
        subst = {"python": python, "model": str(model), "model_dir": str(Path(model).resolve()), "name": name,
                 "port": str(port), "max_model_len": str(max_model_len)}
        argv = [part.format(**subst) for part in self.command]
        if fmt:
            argv += self.quant_flags.get(fmt, [])
        if moe_marlin:
            if not self.moe_marlin_flags:
                raise UsageError(f"engine {self.name} has no MoE backend option", hint="drop --moe-marlin")
            argv += self.moe_marlin_flags
        return argv + list(extra)


class _Profiles(RootModel[dict[str, EngineProfile]]):
    """The file's schema: engine name -> profile."""


def load_profiles(path: Path | None = None) -> dict[str, EngineProfile]:
    """The profiles of `path` (default: the shipped validate/engines.yaml), through the one data-file
    loader, so a mistake in the file is reported as file:line: field."""
    path = Path(path) if path else data_dir("validate") / "engines.yaml"
    profiles = load_yaml_model(path, _Profiles, "engine profiles", hint="see validate/engines.yaml for the schema")
    return {k: p.model_copy(update={"name": k}) for k, p in profiles.root.items()}


def get_profile(name: str) -> EngineProfile:
    profiles = load_profiles()
    if name not in profiles:
        raise UsageError(f"unknown engine {name!r}; known: {', '.join(profiles)}",
                         hint="pick one with --engine (see validate/engines.yaml)")
    return profiles[name]


def engine_python(profile: EngineProfile, explicit: str | None = None) -> str:
    """The Python that runs the engine: --engine-python, $QUANTKIT_ENGINE_PYTHON, the vLLM venv
    made by scripts/setup_vllm.sh (`.venv-vllm`) for vllm-cpu, else this interpreter."""
    if explicit:
        return explicit
    env = os.environ.get("QUANTKIT_ENGINE_PYTHON")
    if env:
        return env
    if profile.name == "vllm-cpu":
        for root in (Path.cwd(), data_dir("validate").parent):
            cand = root / ".venv-vllm" / "bin" / "python"
            if cand.exists():
                return str(cand)
        raise UsageError("no vLLM environment for the vllm-cpu engine",
                         hint="run `bash scripts/setup_vllm.sh` (creates .venv-vllm), or pass --engine-python")
    return shutil.which("python3") or sys.executable
