"""A resolver plugin on PollingResolver: backends listed in a file (README "Writing a resolver plugin").

    python -m examples.resolver_polling

``file:///path/to/orders.txt`` holds one ``host:port`` a line. The plugin
writes only ``lookup()``; the helper owns the thread, the schedule, the
backoff on errors, de-duplication and ``close()``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import discovery
from discovery import Address, ResolverError, ResolverState
from discovery.errors import ConfigError
from discovery.resolver import PollingResolver, ResolverBuilder, ResolverListener, ResolverOptions
from discovery.target import Target, parse_host_port
from discovery.testing import wait_for


class FileResolverBuilder(ResolverBuilder):
    scheme = "file"

    def build(self, target: Target, listener: ResolverListener, options: ResolverOptions) -> PollingResolver:
        if options.config:  # check every input before starting anything
            raise ConfigError("the file resolver takes no options", key_path=next(iter(options.config)))
        path = Path("/" + target.endpoint)

        def lookup() -> ResolverState:
            try:
                lines = path.read_text().split()
            except OSError as exc:  # reported to the channel; the last good set stays
                raise ResolverError(f"cannot read {path}: {exc.strerror}") from exc
            return ResolverState(tuple(Address(*parse_host_port(line, 443)) for line in lines))

        resolver = PollingResolver(listener, lookup, name="file", clock=options.clock,
                                   interval=0.2, min_interval=0.1)  # re-read 5 times a second
        resolver.start()
        return resolver

    def default_authority(self, target: Target) -> str | None:
        return None  # each backend's own host:port


def main() -> None:
    discovery.register_resolver(FileResolverBuilder(), replace=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "orders.txt")
        path.write_text("127.0.0.1:50051\n127.0.0.1:50052\n")
        with discovery.insecure_channel(f"file://{path}") as ch:
            wait_for(lambda: len(ch.backends()) == 2, message="two backends")
            print("backends:", ", ".join(sorted(b.address for b in ch.backends())))
            path.write_text("127.0.0.1:50052\n127.0.0.1:50053\n")
            wait_for(lambda: {b.address for b in ch.backends()} == {"127.0.0.1:50052", "127.0.0.1:50053"},
                     message="the file's new contents")
            print("after the file changed:", ", ".join(sorted(b.address for b in ch.backends())))


if __name__ == "__main__":
    main()
