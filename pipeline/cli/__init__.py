"""The command line (``python -m pipeline``): parser and dispatch, run and serve, status and scale."""

from pipeline.cli.main import main

__all__ = ["main"]
