"""Rich renderings shared by commands (plans, progress bars, summaries, verdicts); the library
reports through `quantkit.progress` and never imports this."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

__all__ = ["console", "human_bytes", "render_plan", "print_verdict", "RichReporter", "quantize_summary"]

console = Console(stderr=False)


class RichReporter:
    """Progress bars and stage lines on the terminal: the `quantkit.progress` reporter that
    quantize, validate, variants and run hand to the library."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = console
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=console, transient=True)
        self.tasks: dict[str, int] = {}

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def stage(self, name: str, detail: str = "") -> None:
        self.console.print(f"[bold cyan]>[/] {escape(name)}" + (f"  [dim]{escape(detail)}[/]" if detail else ""))

    def advance(self, name: str, done: int, total: int) -> None:
        if name not in self.tasks:
            self.tasks[name] = self.progress.add_task(name, total=total)
        self.progress.update(self.tasks[name], completed=done, total=total)
        if done >= total:
            self.progress.remove_task(self.tasks.pop(name))

    def info(self, message: str) -> None:
        style = "yellow" if message.startswith("warning") else "dim"
        self.console.print(f"  [{style}]{escape(message)}[/]")


def quantize_summary(results) -> None:
    """One row per written checkpoint (sizes, timings, peak memory), then where each was written."""
    t = Table(title="quantkit quantize", box=None, pad_edge=False)
    for col in ("format", "FP4/kept", "size", "calib", "export", "total", "peak RSS"):
        t.add_column(col)
    for r in results:
        tm = r.timings
        src = (r.manifest.get("converted_from") or {}).get("format")
        calib = f"from {src}" if src else f"{tm.get('calibrate', 0):.1f}s"
        export = f"convert {tm['convert']:.1f}s" if "convert" in tm else f"{tm.get('export', 0):.1f}s"
        t.add_row(r.format, f"{r.fp4_modules}/{r.kept_modules}",
                  f"{human_bytes(r.source_bytes)} -> {human_bytes(r.size_bytes)}", calib, export,
                  f"{sum(tm.values()):.1f}s", human_bytes(r.peak_rss_bytes))
    console.print(t)
    for r in results:
        console.print(f"[green]wrote[/] {r.path}  [dim]({r.manifest['content_hash'][:19]}...)[/]")


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
    mc = d.get("moe_calibration")
    if mc:
        asked = "" if mc["asked"] == mc["moe"] else f" ({mc['asked']})"
        console.print(f"MoE calibration: {mc['moe']}{asked}: {mc['why']}; experts routed < {mc['min_expert_tokens']} "
                      f"tokens flagged in quantkit.json")
    for w in d["warnings"]:
        console.print(f"[yellow]warning:[/] {w}")


def print_verdict(v) -> None:
    """One verdict: the headline, then each check with its margin, reasons and warnings."""
    from quantkit.judge import signed

    color = "green" if v.verdict == "pass" else "red"
    ppl = f"  ppl {v.perplexity['perplexity']:.2f}" if v.perplexity else ""
    role = " [dim](baseline)[/]" if v.role == "baseline" else ""
    console.print(f"[{color}]{v.verdict.upper():<12}[/] {v.target}{role}{ppl}  "
                  f"[dim]boot {v.timings.get('boot') or 0:.0f}s, total {v.timings.get('total') or 0:.0f}s[/]")
    for c in v.checks:
        mark = {True: "[green]ok[/]  ", False: "[red]FAIL[/]", None: "[dim]--[/]  "}[c["passed"]]
        if c["passed"] is None:
            console.print(f"  {mark} {c['name']}: not checked ({c['detail']})")
        else:
            op = "<=" if c["direction"] == "max" else ">="
            console.print(f"  {mark} {c['name']}: {c['value']} ({'bound ' + str(c['bound']) + ' ' if c['bound'] != c['value'] else ''}"
                          f"{op} {c['threshold']}, margin {signed(c['margin'])})")
    for r in v.reasons:
        if not any(r.startswith(c["name"] + ":") for c in v.checks):
            console.print(f"  [red]-[/] {r}")
    for w in v.warnings:
        console.print(f"  [yellow]-[/] {w}")


def print_matrix(res) -> None:
    """`validate --matrix`: one row per configuration against the reference."""
    from rich.table import Table

    t = Table(box=None, pad_edge=False, show_edge=False, title_justify="left",
              title=f"{res.target}: configurations of {res.engine} compared (|log ppl change| <= {res.threshold})")
    for col in ("configuration", "vs", "result", "|log ppl change|", "worst block nll/token", "greedy same", "detail"):
        t.add_column(col, overflow="fold")
    ref = next((r.config for r in res.runs if r.checked and r.error is None), "-")
    t.add_row(ref, "-", "[cyan]reference[/]", "-", "-", "-", "")
    for p in res.pairs:
        mark = {True: "[green]agrees[/]", False: "[bold red]differs[/]", None: "[yellow]not checked[/]"}[p.passed]
        t.add_row(p.config, p.reference, mark, "-" if p.log_ppl_change is None else f"{p.log_ppl_change:.4f}",
                  "-" if p.max_block_nll_change is None else f"{p.max_block_nll_change:.4f}",
                  f"{p.greedy_same}/{p.greedy_total}" if p.greedy_total else "-", p.detail)
    console.print(t)
