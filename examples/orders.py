"""Import point for the generated OrderService code.

The generated modules import each other as ``ecommerce.v1.…`` (protoc derives
the import from the proto package path), so ``examples/gen`` has to be on
``sys.path``. Importing this module puts it there once and re-exports the two
modules, so other code writes::

    from examples.orders import pb2, pb2_grpc

Always import the generated code through this module, never as
``examples.gen.ecommerce…``: importing one file under two module names would
register its descriptors twice.
"""

from __future__ import annotations

import sys
from pathlib import Path

GEN_DIR = Path(__file__).resolve().parent / "gen"
"""The directory that ``scripts/gen_protos.py`` writes to, added to ``sys.path``."""

if str(GEN_DIR) not in sys.path:
    sys.path.insert(0, str(GEN_DIR))

from ecommerce.v1 import order_service_pb2 as pb2  # noqa: E402
from ecommerce.v1 import order_service_pb2_grpc as pb2_grpc  # noqa: E402

SERVICE_NAME: str = pb2.DESCRIPTOR.services_by_name["OrderService"].full_name
"""Fully qualified service name, ``"ecommerce.v1.OrderService"``, as used by health checks."""

__all__ = ["GEN_DIR", "SERVICE_NAME", "pb2", "pb2_grpc"]
