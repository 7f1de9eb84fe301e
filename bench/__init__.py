"""Benchmarks for grpc-discovery, run as ``python -m bench``.

Everything here measures side by side in ONE client process, in interleaved
rounds, against backends served by a SEPARATE process (:mod:`bench.server`),
so client CPU (``time.process_time``, all client threads) is not polluted by
server work. Results and how they were obtained: ``bench/RESULTS.md``.

Sub-commands (see ``python -m bench --help``):

- ``run`` (default): A = plain grpc channel to one backend (the floor),
  B = grpcio's native ``round_robin`` over N backends, D = discovery's
  ``round_robin`` over the same N, in the sync, future and threads modes, and in the
  aio mode as grpc.aio channels (``grpc.aio.insecure_channel`` to one
  backend / with round_robin over N, ``discovery.aio.insecure_channel``),
  32 asyncio tasks awaiting unary calls on one event loop.
- ``threads``: peak thread count while 200 ``.future()`` calls are in flight
  (unary, unary with a retry policy, stream-unary), grpcio's native
  ``round_robin`` channel (B) against discovery (D), side by side.
- ``micro``: picker, reconcile, hot-path and memory micro-benchmarks.
- ``report``: render RESULTS.md from the JSON the others wrote.

Modules: :mod:`bench.server` (the backend process) and :mod:`bench.procs`
(starting/killing it), :mod:`bench.modes` (load shapes), :mod:`bench.variants`
(the channels compared), :mod:`bench.harness` (run), :mod:`bench.threads`, :mod:`bench.micro`,
:mod:`bench.report`, and
:mod:`bench.health` (``python -m bench.health``, health checking).

The experiments that chose the futures design (pooled spin loops, a blocking
pool, a held stream per backend) served that decision and are gone; their
measurements stay in RESULTS.md.
"""
