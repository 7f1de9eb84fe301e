"""The README's demo command runs and shows what it promises."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_spreads_traffic_and_loses_no_rpc_when_backends_go() -> None:
    out = subprocess.run([sys.executable, "-m", "examples.demo", "--rpcs", "60"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    phases = re.findall(r"^(all three backends|after b1 left|after b2 was killed):\s+(.*?)\s+failed=(\d+)$", out, re.M)
    assert [p[0] for p in phases] == ["all three backends", "after b1 left", "after b2 was killed"], out
    assert phases[0][1] == "b1=20, b2=20, b3=20"
    assert phases[1][1] == "b2=30, b3=30"
    assert phases[2][1] == "b3=60"
    assert all(p[2] == "0" for p in phases), out


def test_protos_are_generated_and_current() -> None:
    subprocess.run([sys.executable, "scripts/gen_protos.py", "--check"], cwd=ROOT, check=True, timeout=120)


def test_example_config_file_is_valid() -> None:
    from discovery.config import load_config_file

    entry = load_config_file(ROOT / "examples" / "discovery.toml")["orders"]
    assert entry.service_config.policy == "outlier_detection"
    assert entry.service_config.health_service_name == "ecommerce.v1.OrderService"
