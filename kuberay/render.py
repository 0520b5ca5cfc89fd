"""Render an overlay with ``kubectl kustomize`` (offline) and parse the result."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from kuberay.errors import RenderError

__all__ = ["ENVIRONMENTS", "load_documents", "manifests_root", "overlay_dir", "render_overlay", "render_text"]

ENVIRONMENTS = ("dev", "staging", "prod")
MANIFESTS_ENV = "KUBERAY_MANIFESTS"


def manifests_root() -> Path:
    """The directory holding ``base/``, ``components/`` and ``overlays/``.

    ``$KUBERAY_MANIFESTS`` when set, otherwise this package's own directory (a source checkout).
    """
    configured = os.environ.get(MANIFESTS_ENV)
    return Path(configured) if configured else Path(__file__).resolve().parent


def overlay_dir(env: str, root: Path | None = None) -> Path:
    """The overlay directory of ``env``; :class:`RenderError` if unknown or missing."""
    if env not in ENVIRONMENTS:
        raise RenderError(f"unknown environment {env!r}: choose one of {', '.join(ENVIRONMENTS)}")
    path = (root or manifests_root()) / "overlays" / env
    if not (path / "kustomization.yaml").is_file():
        raise RenderError(f"overlay {env!r} not found at {path} (set ${MANIFESTS_ENV} to the kuberay/ directory)")
    return path


def render_text(env: str, *, root: Path | None = None, kubectl: str = "kubectl", timeout_s: float = 60.0) -> str:
    """The overlay rendered as one multi-document YAML string."""
    path = overlay_dir(env, root)
    exe = shutil.which(kubectl)
    if exe is None:
        raise RenderError(f"{kubectl!r} not found on PATH: it renders the overlays (kubectl kustomize)")
    try:
        done = subprocess.run(
            [exe, "kustomize", str(path)], capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        raise RenderError(f"kubectl kustomize {path} did not finish within {timeout_s:g} s") from None
    if done.returncode != 0:
        raise RenderError(f"kubectl kustomize {path} failed (exit {done.returncode}): {done.stderr.strip()}")
    return done.stdout


def load_documents(text: str) -> list[dict[str, Any]]:
    """Parse multi-document YAML into objects, skipping empty documents."""
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise RenderError(f"rendered manifests are not valid YAML: {exc}") from None
    out: list[dict[str, Any]] = []
    for doc in docs:
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise RenderError(f"rendered document is not a mapping: {doc!r:.100}")
        out.append(doc)
    return out


def render_overlay(env: str, *, root: Path | None = None, kubectl: str = "kubectl") -> list[dict[str, Any]]:
    """The overlay's objects, in kustomize's output order."""
    return load_documents(render_text(env, root=root, kubectl=kubectl))
