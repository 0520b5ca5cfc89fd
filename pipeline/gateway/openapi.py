"""Write (or check) the OpenAPI document generated from the gateway's code.

``python -m pipeline.gateway.openapi docs/openapi.json`` writes it; ``--check`` exits 1 when the
committed file differs from what the code generates.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pipeline.config import GatewaySettings
from pipeline.gateway.app import build_app
from pipeline.storage.reader import Reader

__all__ = ["generate", "main"]


def generate() -> dict[str, Any]:
    """The OpenAPI document (no database is contacted)."""
    reader = Reader("postgresql://openapi.invalid/none")
    spec: dict[str, Any] = build_app(reader, GatewaySettings()).openapi()  # type: ignore[call-arg]
    return spec


def render() -> str:
    """The document as stable, indented JSON."""
    return json.dumps(generate(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path", type=Path)
    parser.add_argument("--check", action="store_true", help="fail if the file is not up to date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.path.read_text() if args.path.exists() else ""
        if current != text:
            print(f"{args.path} is out of date: run `make openapi`", file=sys.stderr)
            return 1
        return 0
    args.path.write_text(text)
    print(f"wrote {args.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
