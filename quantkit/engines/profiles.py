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


class DeployConfig(BaseModel):
    """One way of serving an artefact (`validate --config`, `validate --matrix`): flags dropped from
    and added to the profile's command, environment added, and why it matters."""

    model_config = ConfigDict(extra="forbid")
    why: str
    drop: list[str] = []  # flags (a flag and its value: give both) removed from the command
    add: list[str] = []
    env: dict[str, str] = {}
    gpus: int = 0  # GPUs the configuration needs (TP); 0: runs wherever the profile runs


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
    configs: dict[str, DeployConfig] = {}  # named deployment configurations; the first is the default
    # measurements this engine cannot take, each with the measured reason (keys: images, mtp_drafter):
    # reported "not checked: <reason>", never a pass
    cannot: dict[str, str] = {}

    def config(self, name: str | None) -> DeployConfig | None:
        if name is None:
            return None
        if name not in self.configs:
            known = ", ".join(self.configs) or "none"
            raise UsageError(f"engine {self.name} has no configuration {name!r}; known: {known}",
                             hint="see validate/engines.yaml (configs:)")
        return self.configs[name]

    @property
    def is_endpoint(self) -> bool:
        return not self.command

    def environment(self, config: str | None = None) -> dict[str, str]:
        """`env` (and the configuration's) with {cpus} replaced by the CPUs this process may run on."""
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
        spec = f"{cpus[0]}-{cpus[-1]}" if cpus == list(range(cpus[0], cpus[-1] + 1)) else ",".join(map(str, cpus))
        cfg = self.config(config)
        env = {**self.env, **(cfg.env if cfg else {})}
        return {k: v.replace("{cpus}", spec) for k, v in env.items()}

    def argv(self, *, model: Path, name: str, port: int, max_model_len: int, fmt: str | None,
             python: str, extra: list[str] = (), moe_marlin: bool = False, config: str | None = None) -> list[str]:
        subst = {"python": python, "model": str(model), "model_dir": str(Path(model).resolve()), "name": name,
                 "port": str(port), "max_model_len": str(max_model_len)}
        argv = [part.format(**subst) for part in self.command]
        if fmt:
            argv += self.quant_flags.get(fmt, [])
        if moe_marlin:
            if not self.moe_marlin_flags:
                raise UsageError(f"engine {self.name} has no MoE backend option", hint="drop --moe-marlin")
            argv += self.moe_marlin_flags
        cfg = self.config(config)
        if cfg is not None:
            argv = _without(argv, cfg.drop) + cfg.add
        return argv + list(extra)


class _Profiles(RootModel[dict[str, EngineProfile]]):
    """The file's schema: engine name -> profile."""


def _without(argv: list[str], drop: list[str]) -> list[str]:
    """argv with the run of `drop` (a flag, or a flag and its value) removed where it occurs."""
    if not drop:
        return argv
    n = len(drop)
    for i in range(len(argv) - n + 1):
        if argv[i:i + n] == drop:
            return argv[:i] + argv[i + n:]
    return argv


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
