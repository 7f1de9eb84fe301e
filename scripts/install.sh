#!/usr/bin/env bash
# Installs everything the project needs on a fresh Debian or Ubuntu machine:
# Knot DNS (the real DNS server the DNS plugin's tests start) and openssl
# (the TLS tests make their certificates with it), then the library, the DNS,
# Consul and Kubernetes plugins and the development tools.
#
# Where the Python packages go:
# - into the active virtual environment, if one is active;
# - else into a virtual environment .venv in the repository when the
#   interpreter is "externally managed" (PEP 668: Debian's and Ubuntu's
#   system Python refuse `pip install`) or when not run as root;
# - else (root with an interpreter of its own, such as pyenv's: CI) into
#   the current interpreter, as before.
# DISCOVERY_VENV=1 forces the .venv, DISCOVERY_VENV=0 forbids it. PYTHON
# picks the interpreter (default python3). After a .venv install, activate
# it with `. .venv/bin/activate` so that python3, pytest and mypy are its own.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi

in_venv() {
  "$PYTHON" -c 'import sys; sys.exit(0 if sys.prefix != sys.base_prefix else 1)'
}

externally_managed() {
  "$PYTHON" -c 'import os, sys, sysconfig
sys.exit(0 if os.path.isfile(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")) else 1)'
}

use_venv=0
case "${DISCOVERY_VENV:-auto}" in
  1) use_venv=1 ;;
  0) use_venv=0 ;;
  *)
    if ! in_venv && { externally_managed || [ "$(id -u)" -ne 0 ]; }; then
      use_venv=1
    fi ;;
esac

apt_packages=()
if { ! command -v knotd && [ ! -x /usr/sbin/knotd ]; } >/dev/null 2>&1; then
  apt_packages+=(knot)
fi
command -v openssl >/dev/null 2>&1 || apt_packages+=(openssl)
if [ "$use_venv" -eq 1 ] && [ ! -x .venv/bin/python ] && ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  # Debian ships venv's pip bootstrap separately, as python3-venv.
  apt_packages+=(python3-venv)
fi

if [ "${#apt_packages[@]}" -gt 0 ]; then
  if [ -n "$SUDO" ] && ! command -v sudo >/dev/null 2>&1; then
    echo "install.sh: not root and no sudo: install ${apt_packages[*]} with apt-get, then run this again" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >/dev/null
fi

if [ "$use_venv" -eq 1 ]; then
  if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
  fi
  PYTHON=.venv/bin/python
  echo "install.sh: installing into the virtual environment .venv; activate it with: . .venv/bin/activate"
fi

# compat mode puts the source tree on sys.path through a plain .pth line, which mypy
# (run from a plugin's own directory) can follow; the default import-hook mode it cannot.
"$PYTHON" -m pip install --quiet --disable-pip-version-check --config-settings editable_mode=compat \
  -e '.[dev]' -e plugins/dns -e plugins/consul -e plugins/kubernetes
