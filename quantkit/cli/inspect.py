"""`quantkit inspect`: lint an NVFP4 checkpoint (local or Hub) from its headers; tables for
people, --json for machines, exit 1 on errors (or warnings with --fail-on warning)."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from quantkit.cli._options import JsonOpt
from quantkit.errors import UsageError


class FailOn(str, Enum):
    error = "error"
    warning = "warning"


_SEV = {"error": "[bold red]error[/]", "warning": "[yellow]warning[/]", "info": "[cyan]info[/]"}


def _modules(f: dict, limit: int = 3) -> str:
    folded = f["modules_folded"]
    more = f" [dim](+{len(folded) - limit} more)[/]" if len(folded) > limit else ""
    return "\n".join(folded[:limit]) + more


def render_report(report) -> None:
    from rich.table import Table

    from quantkit.cli.render import console, human_bytes

    d = report.to_dict()
    fmt, s, hw = d["format"], d["precision"]["summary"], d["hardware"]
    prod = f"{fmt.get('producer') or '?'} {fmt.get('producer_version') or ''}".strip()
    console.print(f"[bold]{d['source']}[/] ({d['location']})  format: [bold]{fmt['kind']}[/] "
                  f"(producer {prod}; tensors {fmt['tensor_format']})  model_type: {d['model']['model_type']}  "
                  f"families: {', '.join(d['model']['families'])}")
    t = Table(box=None, pad_edge=False, show_edge=False, title="precision map", title_justify="left")
    for col in ("module (layers/experts folded)", "precision", "n", "params", "size"):
        t.add_column(col, no_wrap=col != "module (layers/experts folded)", overflow="fold")
    colors = {"fp4": "green", "fp8": "cyan"}
    for g in d["precision"]["groups"]:
        c = colors.get(g["precision"], "yellow")
        t.add_row(g["name"], f"[{c}]{g['precision'].upper()}[/]", str(g["count"]), f"{g['params']:,}",
                  human_bytes(g["bytes"]))
    console.print(t)
    per = "  ".join(f"{k.upper()}: {v['modules']}" for k, v in s["by_precision"].items())
    bpp = f"{s['bits_per_param']:.2f}" if s["bits_per_param"] else "?"
    console.print(f"{per}   size: {human_bytes(s['total_bytes'])}   params: {s['total_params']:,}   "
                  f"{bpp} bits/param")
    if d["findings"]:
        ft = Table(box=None, pad_edge=False, show_edge=False, title="findings", title_justify="left")
        ft.add_column("severity", no_wrap=True)
        ft.add_column("code", no_wrap=True)
        ft.add_column("modules", overflow="fold", max_width=60)
        ft.add_column("what / why / fix", overflow="fold", ratio=1)
        for f in d["findings"]:
            detail = f["message"]
            if f["severity"] != "info":
                detail += f"\n[dim]why:[/] {f['why']}\n[dim]fix:[/] {f['fix']}"
                if f["source"] and f["source"] != "-":
                    detail += f"\n[dim]see:[/] {f['source']}"
            ft.add_row(_SEV[f["severity"]], f["code"], _modules(f), detail)
        console.print(ft)
    moe = hw.get("moe")
    active = human_bytes(hw["active_bytes_per_token"])
    if moe:
        active += f" (MoE: {moe['experts_per_token']}/{moe['num_experts']} experts active)"
    kv = human_bytes(hw["kv_bytes_per_token"]) if hw["kv_bytes_per_token"] else "?"
    ht = Table(box=None, pad_edge=False, show_edge=False, title_justify="left",
               title=f"hardware fit: weights {human_bytes(hw['weights_bytes'])}, read per token {active}, "
                     f"KV {kv}/token, context {hw['context']:,}")
    for col in ("machine", "bandwidth", "memory", "decode ceiling", "fits", "KV room (tokens)"):
        ht.add_column(col, no_wrap=True)
    for m in hw["machines"]:
        fits = {"yes": "[green]yes[/]", "tight": "[yellow]tight[/]", "no": "[red]no[/]"}[m["fits"]]
        ceiling = f"{m['decode_ceiling_tok_s']:.1f} tok/s" if m["decode_ceiling_tok_s"] else "?"
        kvt = f"{m['kv_tokens']:,}" if m["kv_tokens"] is not None else "?"
        ht.add_row(m["name"], f"{m['bandwidth_gbs']:,.0f} GB/s", f"{m['memory_gb']:.0f} GB", ceiling, fits, kvt)
    console.print(ht)
    c = d["counts"]
    style = "red" if c["error"] else ("yellow" if c["warning"] else "green")
    console.print(f"[{style}]{c['error']} error(s), {c['warning']} warning(s), {c['info']} info[/]  "
                  f"[dim]{d['stats']['files']} file(s), {d['stats']['tensors']:,} tensors, "
                  f"{human_bytes(d['stats']['tensor_bytes_read'])} of tensor data read, "
                  f"{d['stats']['seconds']:.2f}s[/]")


def _fix(source: str, out: Optional[Path], in_place: bool, overwrite: bool, as_json: bool, fail_on) -> None:
    from quantkit.cli.render import console
    from quantkit.inspect.fix import fix_checkpoint

    res = fix_checkpoint(source, out, in_place=in_place, overwrite=overwrite)
    if as_json:
        print(json.dumps({"fix": res.to_dict(), "report": res.report.to_dict()}, indent=2))
    else:
        render_report(res.report)
        what = {"added": res.added, "removed": res.removed, "copied between the two metadata files": res.synced}
        for label, items in what.items():
            if items:
                console.print(f"[bold]{label}[/] ({len(items)}): " + ", ".join(items[:8]) + (" ..." if len(items) > 8 else ""))
        for u in res.unfixable:
            console.print(f"[red]not fixable by metadata:[/] {u}")
        where = "in place" + (f" (backups: {', '.join(b.name for b in res.backups)})" if res.backups else "") \
            if in_place else f"into {res.out}"
        console.print(("fixed " + where) if res.changed else f"nothing to change; written {where}")
    code = res.report.exit_code(fail_on.value)
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    @app.command("inspect", short_help="Lint a checkpoint from its headers: formats, precisions, exclusions, engine names, fit.")
    def inspect(
        source: Annotated[str, typer.Argument(help="a checkpoint directory, or a Hub id org/name (headers are "
                                               "read over HTTP; no weights are downloaded)", show_default=False)],
        as_json: JsonOpt = False,
        deep: Annotated[bool, typer.Option("--deep", help="also read scale tensors and weights (local only): "
                                           "NaN/Inf/zero scales, all-zero rows, dead projections")] = False,
        fail_on: Annotated[FailOn, typer.Option("--fail-on", help="exit 1 on findings of this severity or worse",
                                                case_sensitive=False)] = FailOn.error,
        revision: Annotated[Optional[str], typer.Option("--revision", help="Hub branch, tag or commit",
                                                        show_default=False)] = None,
        context: Annotated[Optional[int], typer.Option("--context", min=1, help="tokens of KV cache to fit "
                           "(default: min(max_position_embeddings, 32768))", show_default=False)] = None,
        tp: Annotated[int, typer.Option("--tp", min=1, help="tensor-parallel size to check: every FP4 module "
                      "must shard into whole NVFP4 groups (16 values) per rank")] = 1,
        fix: Annotated[bool, typer.Option("--fix", help="rewrite the ignore / exclude lists (metadata only, never "
                       "tensors) so vLLM builds every module as it is stored, then inspect the result; needs "
                       "--out or --in-place")] = False,
        out: Annotated[Optional[Path], typer.Option("--out", help="with --fix: write the fixed checkpoint here "
                       "(weights hard-linked, else copied)", show_default=False)] = None,
        in_place: Annotated[bool, typer.Option("--in-place", help="with --fix: edit SOURCE itself, keeping the old "
                            "files as config.json.bak / hf_quant_config.json.bak")] = False,
        overwrite: Annotated[bool, typer.Option("--overwrite", help="with --fix --out: replace an existing DIR")] = False,
    ) -> None:
        """Lint an NVFP4 checkpoint without reading its weights: format and producer, the precision
        of every linear, exclusions against the family preset and against the names vLLM builds,
        missing scales, and the decode ceiling on DGX Spark and other Blackwell machines.

        Exit code 1 when there are errors (with --fail-on warning: also warnings), 0 otherwise; 3 bad
        input, 70 internal error (a quantkit bug).

        Examples:

          quantkit inspect out/grm-27b-nvfp4

          quantkit inspect RedHatAI/Qwen3.6-35B-A3B-NVFP4

          quantkit inspect out/x --json | jq .findings

          quantkit inspect out/x --deep --fail-on warning

          quantkit inspect nvidia/Some-Model-NVFP4 --tp 8

          quantkit inspect community-ckpt/ --fix --out fixed-ckpt/
        """
        from quantkit.inspect import inspect_checkpoint

        if fix:
            _fix(source, out, in_place, overwrite, as_json, fail_on)
            return
        if out is not None or in_place:
            raise UsageError("--out and --in-place go with --fix", hint="add --fix, or drop them")
        report = inspect_checkpoint(source, deep=deep, revision=revision, context=context, tp=tp)
        if as_json:
            print(json.dumps(report.to_dict(), indent=2))
        else:
            render_report(report)
        code = report.exit_code(fail_on.value)
        if code:
            raise typer.Exit(code)
