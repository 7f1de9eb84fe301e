#!/usr/bin/env bash
# Installs everything the project needs on a fresh Debian machine:
# Knot DNS (the real DNS server the DNS plugin's tests start) and openssl
# (the TLS tests make their certificates with it), then the
# library, the DNS, Consul and Kubernetes plugins and the development tools into the current Python.
set -euo pipefail
cd "$(dirname "$0")/.."

if { ! command -v knotd && [ ! -x /usr/sbin/knotd ]; } >/dev/null 2>&1 || ! command -v openssl >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends knot openssl >/dev/null
fi

# compat mode puts the source tree on sys.path through a plain .pth line, which mypy
# (run from a plugin's own directory) can follow; the default import-hook mode it cannot.
python3 -m pip install --quiet --disable-pip-version-check --config-settings editable_mode=compat \
  -e '.[dev]' -e plugins/dns -e plugins/consul -e plugins/kubernetes
