"""The README's Consul demo runs with no setup and shows what it promises."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_consul_demo_follows_the_registry_without_a_failed_rpc() -> None:
    out = subprocess.run([sys.executable, "-m", "examples.consul_demo", "--rpcs", "30"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    phases = {title: (split, failed)
              for title, split, failed in re.findall(r"^(.+?):\s{2,}(.*?)\s+failed=(\d+)$", out, re.M)}
    assert list(phases) == ["all three passing", "b1 NOT_SERVING, its check critical", "b2 deregistered",
                            "b4 registered", "agent restarted"], out
    assert [split for split, _ in phases.values()] == [
        "b1=10, b2=10, b3=10", "b2=15, b3=15", "b3=30", "b3=15, b4=15", "b3=15, b4=15"], out
    assert all(failed == "0" for _, failed in phases.values()), out
