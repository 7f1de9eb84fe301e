"""Consul resolver plugin for grpc-discovery: ``consul://`` targets (health-filtered blocking queries).

Registered under the ``discovery.resolvers`` entry-point group as ``consul``;
the core never imports this package by name. The in-process test agent is
:mod:`discovery_consul.testing`.
"""

from __future__ import annotations
