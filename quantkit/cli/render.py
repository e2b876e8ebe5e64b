"""Rich renderings shared by commands (plans, summaries)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

__all__ = ["console", "human_bytes", "render_plan"]

console = Console(stderr=False)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


def render_plan(plan, show_all: bool = False) -> None:
    d = plan.to_dict()
    s = d["summary"]
    console.print(f"[bold]{plan.model_source}[/]  {plan.architecture} ({plan.model_type})  "
                  f"families: {', '.join(plan.families)}  backend: {plan.backend}")
    t = Table(box=None, pad_edge=False, show_edge=False)
    t.add_column("module (layers folded)", no_wrap=True)
    for col in ("kind", "n", "precision"):
        t.add_column(col, no_wrap=True)
    t.add_column("rule / reason", overflow="fold", ratio=1)
    for g in d["groups"]:
        if not show_all and g["precision"] == "fp4" and g["reason"] == "NVFP4":
            prec = "[green]FP4[/]"
        else:
            prec = "[yellow]BF16[/]" if g["precision"] == "bf16" else g["precision"].upper()
        reason = g["reason"] if g["source"] == "default" else f"[dim]{g['source']}[/] {g['reason']}"
        t.add_row(g["name"], g["kind"], str(g["count"]), prec, reason)
    console.print(t)
    console.print(
        f"FP4: {s['fp4']} modules ({s['fp4_params']:,} params)   kept: {s['kept']}   "
        f"size: {human_bytes(s['source_bytes'])} -> ~{human_bytes(s['estimated_bytes'])}   "
        f"~{s['bits_per_param']:.2f} bits/param")
    for w in d["warnings"]:
        console.print(f"[yellow]warning:[/] {w}")
