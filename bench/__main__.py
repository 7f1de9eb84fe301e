"""``python -m bench [run|threads|tail|picks|micro|instructions|report] ...`` — see :mod:`bench` and ``--help``."""

from __future__ import annotations

import argparse
import os
import sys

# Quiet grpc core's INFO lines (GOAWAY on shutdown etc.); must precede importing grpc.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def _ints(s: str) -> list[int]:
    return [int(x) for x in _csv(s)]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv.insert(0, "run")
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="A vs B vs D, interleaved rounds (default)")
    r.add_argument("--backends", type=int, default=10, help="N backends (default 10)")
    r.add_argument("--rounds", type=int, default=9, help="interleaved rounds (default 9)")
    r.add_argument("--rpcs", type=int, default=1500, help="RPCs per variant per mode per round (default 1500)")
    r.add_argument("--modes", type=_csv, default=["sync", "future", "threads", "aio"],
                   help="comma list of sync,future,threads,aio (default all; aio = grpc.aio channels, "
                        "32 tasks awaiting unary calls)")
    r.add_argument("--variants", type=_csv, default=["A", "B", "D"],
                   help="comma list (default A,B,D; DM = D with Prometheus metrics on, compared with D)")
    r.add_argument("--quick", action="store_true", help="tiny counts: a smoke test (< 30 s)")
    r.add_argument("--json", dest="json_path", default=None, help="also write the results as JSON here")

    th = sub.add_parser("threads", help="peak threads during N concurrent .future() calls: grpcio round_robin vs "
                                       "discovery (unary, unary with retries, stream-unary)")
    th.add_argument("--backends", type=int, default=10, help="N backends (default 10)")
    th.add_argument("--calls", type=int, default=200, help="concurrent futures per case (default 200)")
    th.add_argument("--hold-ms", type=int, default=100, help="how long the server holds each call (default 100)")
    th.add_argument("--quick", action="store_true", help="4 backends, 40 calls")
    th.add_argument("--json", dest="json_path", default=None)

    m = sub.add_parser("micro", help="pick, reconcile, hot-path and memory micro-benchmarks")
    m.add_argument("--quick", action="store_true")
    m.add_argument("--only", choices=["pick"], default=None, help="pick: only pick costs and ring_hash's ring")
    m.add_argument("--json", dest="json_path", default=None)

    t = sub.add_parser("tail", help="tail latency with one backend 10x slower: p50/p99 per policy, one run")
    t.add_argument("--delays-ms", type=lambda s: [float(x) for x in _csv(s)], default=[2, 2, 2, 2, 20],
                   help="per-backend delay (default 2,2,2,2,20)")
    t.add_argument("--rounds", type=int, default=3)
    t.add_argument("--rpcs", type=int, default=2000, help="RPCs per policy per round (default 2000)")
    t.add_argument("--concurrency", type=int, default=16)
    t.add_argument("--quick", action="store_true")
    t.add_argument("--json", dest="json_path", default=None)

    pk = sub.add_parser("picks", help="pick cost of every policy at 10, 1k and 10k backends (the micro subset)")
    pk.add_argument("--quick", action="store_true")

    ins = sub.add_parser("instructions", help="client instructions per RPC under valgrind's callgrind (repeatable "
                                             "to ~2 %%, unlike CPU time on a shared machine)")
    ins.add_argument("--mode", choices=["sync", "aio"], default="sync")
    ins.add_argument("--variants", type=_csv, default=["B", "D"], help="comma list (default B,D)")
    ins.add_argument("--rpcs", type=_ints, default=None,
                     help="n1,n2: RPCs in the two runs per variant (default 200,1200 sync; 320,1600 aio)")

    rp = sub.add_parser("report", help="render RESULTS.md from the JSON of run/micro")
    rp.add_argument("--run", action="append", default=[], help="JSON of a run (repeatable: one per N)")
    rp.add_argument("--micro", default=None)
    rp.add_argument("--notes", default=None, help="markdown appended at the end (findings)")
    rp.add_argument("-o", "--out", default=None)

    args = ap.parse_args(argv)
    if args.cmd == "report":
        from .report import main as report_main

        return report_main(args)
    if args.cmd == "run":
        from .harness import Config, run

        cfg = Config(backends=args.backends, rounds=args.rounds, rpcs=args.rpcs, modes=args.modes,
                     variants=args.variants, json_path=args.json_path)
        if args.quick:
            cfg.backends, cfg.rounds, cfg.rpcs = min(cfg.backends, 4), 2, 200
        summary = run(cfg)
        errors = sum(r["errors"] for r in summary["rows"])
        return 1 if errors else 0
    if args.cmd == "instructions":
        from .instructions import run_instructions

        n1, n2 = args.rpcs or ((200, 1200) if args.mode == "sync" else (320, 1600))
        run_instructions(args.mode, args.variants, n1, n2)
        return 0
    if args.cmd == "tail":
        from .tail import run_tail

        rounds, rpcs = (1, 400) if args.quick else (args.rounds, args.rpcs)
        out = run_tail(delays_ms=args.delays_ms, rounds=rounds, rpcs=rpcs, concurrency=args.concurrency,
                       warm_s=1.5 if args.quick else 3.0, json_path=args.json_path)
        return 1 if any(r["errors"] for r in out["rows"]) else 0
    if args.cmd == "picks":
        from .micro import bench_pick, format_pick

        print(format_pick({"pick": bench_pick((10, 1000) if args.quick else (10, 1000, 10000),
                                              20000 if args.quick else 200000)}))
        return 0
    if args.cmd == "threads":
        from .threads import run_threads_bench

        backends, calls = (4, 40) if args.quick else (args.backends, args.calls)
        res = run_threads_bench(backends, calls, args.hold_ms, json_path=args.json_path)
        return 1 if any(r["errors"] for r in res["threads"]) else 0
    if args.cmd == "micro":
        import json

        from .micro import run_micro

        res = run_micro(quick=args.quick, only=args.only)
        res["command"] = "python -m bench " + " ".join(argv)
        if args.json_path:
            with open(args.json_path, "w") as fh:
                json.dump(res, fh, indent=1, default=str)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
