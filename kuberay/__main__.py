"""``python -m kuberay``: see :mod:`kuberay.cli`."""

from __future__ import annotations

import sys

from kuberay.cli import main

if __name__ == "__main__":
    sys.exit(main())
