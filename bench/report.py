"""Render bench/RESULTS.md from the JSON files of ``run`` and ``micro``.

``python -m bench report --run N10.json --run N100.json --micro M.json
--notes findings.md -o bench/RESULTS.md``. Commands are taken from the JSON (each records its own).
Several ``--run`` files at the same N (say the sync modes' run and the aio
mode's run) are tabled together in that N's section.
"""

from __future__ import annotations

import json
from typing import Any

from .modes import AIO_MODES
from .variants import AIO_LABELS, AIO_NOTE, LABELS

__all__ = ["render"]


def _f(x: Any, digits: int = 1) -> str:
    if isinstance(x, float):
        return "n/a" if x != x else f"{x:,.{digits}f}"
    return str(x)


def _cmd(doc: dict[str, Any]) -> str:
    c = doc.get("config", {}).get("command", "")
    args = c.split(" ", 1)[1] if " " in c else ""
    return f"python -m bench {args}".strip()


def _machine(m: dict[str, Any]) -> str:
    return (f"{m['nproc']} CPUs ({m['cpu']}), Python {m['python']}, grpcio {m['grpcio']}, "
            f"{m['platform']}. Code: {m.get('git', '?')}.")


def _run_line(run: dict[str, Any], with_modes: bool) -> str:
    c = run["config"]
    what = f"{', '.join(c.get('modes', []))}; " if with_modes else ""
    code = f"; code {run['machine'].get('git', '?')}" if with_modes and run.get("machine") else ""
    return (f"`{_cmd(run)}` ({what}{c['backends']} backends, {c['rounds']} rounds x {c['rpcs']} RPCs per "
            f"variant and mode, {run.get('seconds', '?')} s{code})")


def render_run(run: dict[str, Any] | list[dict[str, Any]]) -> list[str]:
    """One section per N: the rows of every run given (e.g. the sync modes' run and the aio mode's run)."""
    runs = run if isinstance(run, list) else [run]
    c = runs[0]["config"]
    out = [f"## A vs B vs D, N = {c['backends']}", ""]
    if len(runs) == 1:
        out += [f"Command: {_run_line(runs[0], False)}", ""]
    else:
        out += ["Commands (one process each):", ""]
        out += [f"- {_run_line(r, True)}" for r in runs]
        out.append("")
    out += ["| mode | variant | CPU us/RPC | RPC/s | p50 us | p99 us | thread starts /1k RPCs |",
            "|---|---|---:|---:|---:|---:|---:|"]
    rows = [r for doc in runs for r in doc["rows"]]
    for r in rows:
        out.append(f"| {r['mode']} | {r['variant']} | {_f(r['cpu_us'])} | {_f(r['rps'], 0)} | "
                   f"{_f(r['p50_us'], 0)} | {_f(r['p99_us'], 0)} | {_f(r['thread_starts_per_1k'])} |"
                   + (f" errors: {r['errors']}" if r.get("errors") else ""))
    out += ["", "Medians over rounds of the per-round ratios of client CPU per RPC (X/A, X/B) and of "
            "throughput (wall X/B = B's RPC/s over X's):", "",
            "| mode | variant | CPU X/A | CPU X/B | wall X/B | target (X/B) | verdict |",
            "|---|---|---:|---:|---:|---:|---|"]
    for e in (e for doc in runs for e in doc["ratios"]):
        v = e["variant"]
        t = e.get("target_vs_B")
        verdict = "" if t is None else ("meets" if e["meets_target"] else "**misses**")
        out.append(f"| {e['mode']} | {v} | {_f(e.get(f'cpu_{v}/A', float('nan')), 3)} | "
                   f"{_f(e.get(f'cpu_{v}/B', float('nan')), 3)} | {_f(e.get(f'wall_{v}/B', float('nan')), 3)} "
                   f"| {'' if t is None else f'<= {t}'} | {verdict} |")
    out.append("")
    for k in dict.fromkeys(r["variant"] for r in rows if r["mode"] not in AIO_MODES):
        out.append(f"- **{k}**: {LABELS.get(k, k)}")
    for m, k in dict.fromkeys((r["mode"], r["variant"]) for r in rows if r["mode"] in AIO_MODES):
        out.append(f"- **{k}** ({m}): {AIO_LABELS.get(k, k)}")
    if any(r["mode"] in AIO_MODES for r in rows):
        out.append(f"\n{AIO_NOTE}")
    out.append("")
    return out


def render(runs: list[dict[str, Any]], micro: dict[str, Any] | None, notes: str | None = None) -> str:
    out: list[str] = ["# Benchmark results (issue 5)", ""]
    docs = list(runs)
    m = docs[0].get("machine") if docs else None
    if m is None:
        from .harness import machine

        m = machine()
    out += [f"Machine: {_machine(m)}", "",
            "Client CPU = `time.process_time()` of the client process (all its threads) over the measured "
            "loop / RPCs; the backends run in a separate process (`python -m bench.server`). Ratios are the "
            "median over rounds of per-round ratios; rounds interleave the variants, the order rotated by one "
            "each round.", ""]
    by_n: dict[Any, list[dict[str, Any]]] = {}
    for run in runs:  # runs at the same N (e.g. sync modes, then aio) share a section
        by_n.setdefault(run["config"]["backends"], []).append(run)
    for group in by_n.values():
        out += render_run(group)
    if micro:
        from .micro import format_micro

        out += ["## Micro-benchmarks", "", f"Command: `{micro.get('command', 'python -m bench micro')}`", "",
                "```", format_micro(micro), "```", ""]
    if notes:
        out += [notes.rstrip(), ""]
    return "\n".join(out)


def main(args: Any) -> int:
    def load(p: str) -> dict[str, Any]:
        with open(p) as f:
            return json.load(f)  # type: ignore[no-any-return]

    notes = None
    if args.notes:
        with open(args.notes) as f:
            notes = f.read()
    text = render([load(p) for p in args.run],
                  load(args.micro) if args.micro else None, notes)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    return 0
