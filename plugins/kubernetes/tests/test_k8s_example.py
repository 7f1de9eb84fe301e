"""The README's Kubernetes example runs with no setup and shows what it promises."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.integration


def test_kubernetes_demo_runs_on_the_embedded_api_server() -> None:
    out = subprocess.run([sys.executable, "-m", "examples.kubernetes_demo", "--rpcs", "30"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    phases = re.findall(r"^(.+?):\s+(orders-.*?)\s+failed=(\d+)$", out, re.M)
    assert [(title, split, failed) for title, split, failed in phases] == [
        ("two pods, one slice", "orders-0=15, orders-1=15", "0"),
        ("a third pod, in a second slice", "orders-0=10, orders-1=10, orders-2=10", "0"),
        ("orders-0 terminating", "orders-1=15, orders-2=15", "0"),
        ("after a 410 Gone and a relist", "orders-0=10, orders-1=10, orders-2=10", "0"),
    ], out
    assert "127.0.0.13:" in out and "zone=zone-a node=node-2 pod=orders-2" in out
