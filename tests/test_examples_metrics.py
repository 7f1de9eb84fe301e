"""The example server and the demo serve Prometheus metrics at /metrics."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from examples.orders import pb2, pb2_grpc  # noqa: E402

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_example_server_serves_metrics() -> None:
    metrics_port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "examples.server", "--port", "0", "--name", "m1",
                             "--metrics-port", str(metrics_port), "--log-level", "WARNING"],
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("LISTENING "), line
        with grpc.insecure_channel(line.split()[1]) as ch:
            stub = pb2_grpc.OrderServiceStub(ch)
            item = pb2.OrderItem(sku="s", quantity=1, price_cents=5)
            for _ in range(2):
                stub.CreateOrder(pb2.CreateOrderRequest(user_id="u", items=[item]), timeout=10)
            with pytest.raises(grpc.RpcError):
                stub.CreateOrder(pb2.CreateOrderRequest(user_id=""), timeout=10)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        assert 'orders_server_rpcs_total{code="OK",method="CreateOrder"} 2.0' in text
        assert 'orders_server_rpcs_total{code="INVALID_ARGUMENT",method="CreateOrder"} 1.0' in text
        assert 'orders_server_rpc_duration_seconds_count{method="CreateOrder"} 3.0' in text
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


def test_demo_serves_client_metrics() -> None:
    out = subprocess.run([sys.executable, "-m", "examples.demo", "--rpcs", "30", "--metrics-port", "0"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=True).stdout
    assert re.search(r"^client metrics on http://127\.0\.0\.1:\d+/metrics$", out, re.M), out
    ok = [float(v) for v in re.findall(r'^    discovery_rpcs_total\{[^}]*code="OK"[^}]*\} (\S+)$', out, re.M)]
    assert len(ok) == 3  # one series per backend
    assert sum(ok) == 90  # every RPC of the three phases succeeded, each counted once where it succeeded
    ready = re.findall(r'^    discovery_backends\{state="READY",target="[^"]+"\} (\S+)$', out, re.M)
    assert ready == ["1.0"]  # b3 alone at the end
