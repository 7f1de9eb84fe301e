"""The measured comparison, in interleaved rounds.

- :func:`run` (``python -m bench run``): A, B, D per mode at one N. In the
  aio mode A, B and D are their grpc.aio counterparts
  (:func:`bench.variants.build_aio`), on one event loop.

One client process, one backend process. A round runs every variant once
(the order rotated by one each round), so slow drifts of the machine hit all
variants alike. Ratios are computed per round (D/A, D/B, ...) and reported as
the median across rounds.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from .modes import AIO_MODES, MODES, Sample, aio_loop, close_aio_loop, count_thread_starts
from .procs import BackendProcess
from .variants import AIO_LABELS, AIO_NOTE, LABELS, Variant, build, build_aio

__all__ = ["TARGETS", "Config", "machine", "run"]

# D/B targets from issue 5, on client CPU per RPC.
TARGETS = {"sync": 1.05, "threads": 1.05, "future": 1.25, "aio": 1.05}
# DM/D target from issue 15: Prometheus metrics on cost at most 10 % client CPU.
DM_TARGET = 1.10
BASE_VARIANTS = ("A", "B", "D")


@dataclass
class Config:
    backends: int = 10
    rounds: int = 9
    rpcs: int = 1500
    modes: Sequence[str] = ("sync", "future", "threads", "aio")
    variants: Sequence[str] = BASE_VARIANTS
    json_path: str | None = None


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "discovery"], cwd=root, capture_output=True,
                               text=True, timeout=5).stdout.strip()
        git = f"{rev}{' + uncommitted changes in discovery/' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        git = "?"
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "platform": platform.platform(),
        "git": git,
    }


def _variants_for(cfg: Config, mode: str) -> list[str]:
    return list(cfg.variants)


def _median(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def summarize(samples: dict[tuple[str, str], list[Sample]], cfg: Config) -> dict[str, Any]:
    """Medians per (mode, variant) and medians of per-round ratios against A and B."""
    rows = []
    ratios = []
    for mode in cfg.modes:
        names = _variants_for(cfg, mode)
        for v in names:
            ss = samples[(mode, v)]
            rows.append({
                "mode": mode,
                "variant": v,
                "cpu_us": _median([s.cpu_us for s in ss]),
                "rps": _median([s.rps for s in ss]),
                "p50_us": _median([s.pct(50) for s in ss]),
                "p99_us": _median([s.pct(99) for s in ss]),
                "thread_starts_per_1k": _median([s.thread_starts * 1000 / s.n for s in ss]),
                "errors": sum(s.errors for s in ss),
                "rounds": len(ss),
            })
        for v in names:
            if v in ("A", "B"):
                continue
            entry: dict[str, Any] = {"mode": mode, "variant": v}
            for base in ("A", "B", "D"):
                if (mode, base) not in samples or base == v:
                    continue
                pairs = list(zip(samples[(mode, v)], samples[(mode, base)], strict=True))
                entry[f"cpu_{v}/{base}"] = _median([x.cpu_us / y.cpu_us for x, y in pairs])
                entry[f"wall_{v}/{base}"] = _median([y.rps / x.rps for x, y in pairs])
            target = TARGETS.get(mode)
            if v == "DM":
                # Metrics on against metrics off, the same channel design (issue 15).
                if f"cpu_{v}/D" in entry:
                    entry["target_vs_D"] = DM_TARGET
                    entry["meets_target"] = entry[f"cpu_{v}/D"] <= DM_TARGET
            elif target is not None and f"cpu_{v}/B" in entry:
                entry["target_vs_B"] = target
                entry["meets_target"] = entry[f"cpu_{v}/B"] <= target
            ratios.append(entry)
    return {"rows": rows, "ratios": ratios}


def format_tables(summary: dict[str, Any], cfg: Config) -> str:
    out = []
    out.append(f"backends={cfg.backends} rounds={cfg.rounds} rpcs/round={cfg.rpcs} "
               f"(median of rounds; CPU = client process CPU per RPC, all threads)")
    out.append("")
    hdr = f"{'mode':8} {'var':5} {'cpu us/RPC':>10} {'RPC/s':>8} {'p50 us':>8} {'p99 us':>8} {'thr/1k':>7}"
    out.append(hdr)
    out.append("-" * len(hdr))
    for r in summary["rows"]:
        out.append(f"{r['mode']:8} {r['variant']:5} {r['cpu_us']:10.1f} {r['rps']:8.0f} {r['p50_us']:8.0f} "
                   f"{r['p99_us']:8.0f} {r['thread_starts_per_1k']:7.1f}"
                   + (f"  errors={r['errors']}" if r["errors"] else ""))
    out.append("")
    hdr = (f"{'mode':8} {'var':5} {'cpu X/A':>8} {'cpu X/B':>8} {'wall X/B':>9} {'cpu X/D':>8} {'target':>9}"
           "  verdict")
    out.append(hdr)
    out.append("-" * len(hdr))
    for e in summary["ratios"]:
        v = e["variant"]
        xa = e.get(f"cpu_{v}/A", float("nan"))
        xb = e.get(f"cpu_{v}/B", float("nan"))
        wb = e.get(f"wall_{v}/B", float("nan"))
        xd = e.get(f"cpu_{v}/D", float("nan"))
        t = e.get("target_vs_B")
        td = e.get("target_vs_D")
        target = f"X/B<={t}" if t is not None else (f"X/D<={td}" if td is not None else "")
        verdict = "" if t is None and td is None else ("ok" if e["meets_target"] else "MISSES")
        out.append(f"{e['mode']:8} {v:5} {xa:8.3f} {xb:8.3f} {wb:9.3f} {xd:8.3f} {target:>9}  {verdict}")
    out.append("")
    for k in dict.fromkeys(v for m in cfg.modes if m not in AIO_MODES for v in _variants_for(cfg, m)):
        out.append(f"  {k}: {LABELS[k]}")
    for m in (m for m in cfg.modes if m in AIO_MODES):
        for k in _variants_for(cfg, m):
            out.append(f"  {k} ({m}): {AIO_LABELS[k]}")
    if any(m in AIO_MODES for m in cfg.modes):
        out.append("")
        out.append(textwrap.fill(AIO_NOTE, 118, initial_indent="  ", subsequent_indent="  "))
    return "\n".join(out)


def run(cfg: Config, log: Any = sys.stderr) -> dict[str, Any]:
    """Run the interleaved benchmark; print tables; return the summary (and write JSON)."""
    count_thread_starts()
    for m in cfg.modes:
        if m not in MODES:
            raise SystemExit(f"unknown mode {m!r}; expected some of {sorted(MODES)}")
    t_start = time.monotonic()
    samples: dict[tuple[str, str], list[Sample]] = {}
    with BackendProcess(cfg.backends) as bp:
        # Sync variants serve sync/future/threads; the aio modes get grpc.aio
        # variants of their own, made on the one event loop (aio_loop()).
        names = list(dict.fromkeys(v for m in cfg.modes if m not in AIO_MODES for v in _variants_for(cfg, m)))
        aio_names = list(dict.fromkeys(v for m in cfg.modes if m in AIO_MODES for v in _variants_for(cfg, m)))
        built: dict[str, Variant] = {}
        built_aio: dict[str, Variant] = {}
        try:
            for name in names:
                built[name] = build(name, bp.targets)
            for name in aio_names:
                built_aio[name] = build_aio(name, bp.targets, aio_loop())
            print(f"# {len(names) + len(aio_names)} variants ready over {cfg.backends} backends "
                  f"(server pid {bp.pid}) in {time.monotonic() - t_start:.1f}s", file=log, flush=True)
            for r in range(cfg.rounds):
                for mode in cfg.modes:
                    fn = MODES[mode]
                    pool = built_aio if mode in AIO_MODES else built
                    line = []
                    order = _variants_for(cfg, mode)
                    # Rotate the order each round (A,B,D / B,D,A / D,A,B ...) so
                    # that no variant always runs right after another.
                    k = r % len(order)
                    for v in order[k:] + order[:k]:
                        with pool[v].active():
                            s = fn(pool[v].mc, cfg.rpcs)
                        samples.setdefault((mode, v), []).append(s)
                        line.append(f"{v}={s.cpu_us:.0f}us")
                    print(f"# round {r + 1}/{cfg.rounds} {mode:8} " + " ".join(line), file=log, flush=True)
        finally:
            for variant in [*built.values(), *built_aio.values()]:
                try:
                    variant.close()
                except Exception as exc:  # keep closing the others
                    print(f"# closing {variant.name}: {exc}", file=log)
            close_aio_loop()  # no-op if no aio mode ran
    summary = summarize(samples, cfg)
    summary["machine"] = machine()
    summary["config"] = {"backends": cfg.backends, "rounds": cfg.rounds, "rpcs": cfg.rpcs,
                         "modes": list(cfg.modes), "variants": list(cfg.variants),
                         "command": " ".join(sys.argv)}
    summary["seconds"] = round(time.monotonic() - t_start, 1)
    summary["raw"] = {f"{m}/{v}": [{"cpu_us": s.cpu_us, "rps": s.rps, "p50_us": s.pct(50),
                                    "p99_us": s.pct(99), "thread_starts": s.thread_starts, "n": s.n,
                                    "errors": s.errors} for s in ss]
                      for (m, v), ss in samples.items()}
    print(format_tables(summary, cfg))
    if cfg.json_path:
        with open(cfg.json_path, "w") as f:
            json.dump(summary, f, indent=1, default=str)
    return summary
