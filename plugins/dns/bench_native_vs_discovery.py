"""How long until a newly added A record gets traffic: grpcio's native DNS resolver vs discovery-dns.

Starts a real Knot DNS server on 127.0.0.1 (a free port) and two grpc backends
on 127.0.0.2 and 127.0.0.3 (same port). ``svc.test.internal`` first has one A
record (127.0.0.2, TTL 2 s). Two channels resolve the same target through that
server, both with round_robin:

- native:    ``grpc.insecure_channel("dns://127.0.0.1:PORT/svc.test.internal:PORT")``
             (grpcio's c-ares resolver, which takes the DNS server from the authority)
- discovery: ``discovery.insecure_channel(same target)`` with default resolver settings

Then the A record for 127.0.0.3 is added with TTL 2 s, and both channels send
one RPC every ``--interval`` seconds until each has reached the new backend or
``--max-wait`` seconds pass. Prints the seconds from the DNS change to the
first RPC served by the new backend, for each channel.

    python plugins/dns/bench_native_vs_discovery.py [--max-wait 40]

Needs knotd (Debian package ``knot``) and the discovery-dns plugin installed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent / "tests"))

from discovery_dns.testing import KnotServer
from dnsplugin_support import Backends, health_check

import discovery

OLD, NEW = "127.0.0.2", "127.0.0.3"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-wait", type=float, default=40.0, help="give up after this many seconds")
    ap.add_argument("--interval", type=float, default=0.05, help="seconds between RPCs on each channel")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp, Backends([OLD, NEW]) as backends:
        knot = KnotServer(Path(tmp) / "knot", [f"svc 2 A {OLD}"])
        with knot:
            target = f"dns://{knot.address}/svc.test.internal:{backends.port}"
            channels: dict[str, grpc.Channel] = {
                "native grpcio (c-ares)": grpc.insecure_channel(
                    target, options=[("grpc.lb_policy_name", "round_robin")]
                ),
                "discovery-dns (defaults)": discovery.insecure_channel(
                    target, service_config={"loadBalancingConfig": [{"round_robin": {}}]}
                ),
            }
            try:
                for name, ch in channels.items():
                    health_check(ch, timeout=10, wait_for_ready=True, client=name)
                knot.add("svc", "A", NEW, ttl=2)
                start = time.monotonic()
                found: dict[str, float] = {}
                sent = dict.fromkeys(channels, 0)
                pause = threading.Event()
                while len(found) < len(channels) and time.monotonic() - start < args.max_wait:
                    for name, ch in channels.items():
                        if name in found:
                            continue
                        try:
                            health_check(ch, timeout=2, client=name)
                        except grpc.RpcError as err:
                            print(f"{name}: RPC failed: {err.code()}", file=sys.stderr)
                        sent[name] += 1
                        if backends.count(NEW, name) > 0:
                            found[name] = time.monotonic() - start
                    pause.wait(args.interval)
            finally:
                for ch in channels.values():
                    ch.close()

    print(f"A record {NEW} (TTL 2 s) added to svc.test.internal, which had {OLD} only:")
    for name in channels:
        if name in found:
            result = f"first RPC on the new backend after {found[name]:.2f} s"
        else:
            result = f"NOT within {args.max_wait:g} s ({sent[name]} RPCs, all to {OLD})"
        print(f"  {name:<26} {result}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
