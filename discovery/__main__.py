"""``python -m discovery``: the ``discovery`` command (see :mod:`discovery.cli`)."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
