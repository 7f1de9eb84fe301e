"""Thin call drivers over :mod:`discovery.attempts`: blocking, asyncio, and futures.

- :mod:`.books` closes the books on one attempt (in-flight count, the
  picker's ``done`` callback, the channel's error memory): every driver
  ends every attempt through :func:`.books.end_attempt`.
- :mod:`.blocking` runs unary-request calls on the caller's thread and
  server streams as restartable iterators.
- :mod:`.asyncio` runs calls as grpc.aio calls on an event loop: the
  asyncio channel's, or the shared futures loop for ``.future()`` and hedged
  calls of the sync channel.
"""
