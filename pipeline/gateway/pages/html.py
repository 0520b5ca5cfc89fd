"""HTML written in code, escaped by default: ``el("td", {"class": "n"}, value)``.

Every value that is not ``Markup`` is escaped when it joins a document (text and attribute values
alike), so a hostname, pod name or reject reason that holds ``<script>`` shows as text. ``Markup``
is only made here and by the chart and page modules from markup they built themselves; nothing
from a request or the database ever becomes ``Markup`` unescaped.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from urllib.parse import quote, urlencode

__all__ = ["Markup", "Node", "el", "escape", "gpu_path", "href", "join", "number", "time_tag", "void"]

_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9:-]*$")  # tag and attribute names come from code only


class Markup(str):
    """A string already safe to place in HTML (built here, never taken from input)."""

    __slots__ = ()

    def __html__(self) -> Markup:
        return self

    def __add__(self, other: str) -> Markup:
        """Concatenation stays markup; a plain string joining it is escaped."""
        return Markup(str.__add__(self, escape(other)))

    def __radd__(self, other: str) -> Markup:
        return Markup(str.__add__(escape(other), self))


Node = Markup | str | int | float | None | Iterable["Node"]


def escape(value: object) -> Markup:
    """``value`` as HTML text: ``Markup`` as is, everything else escaped (quotes included)."""
    if isinstance(value, Markup):
        return value
    return Markup(html.escape(str(value), quote=True))


def join(nodes: Node) -> Markup:
    """Children as one ``Markup``: strings and numbers escaped, None skipped, iterables flattened."""
    if nodes is None:
        return Markup("")
    if isinstance(nodes, str | int | float):
        return escape(nodes)
    return Markup("".join(join(n) for n in nodes))


def _attrs(attrs: Mapping[str, object] | None) -> str:
    if not attrs:
        return ""
    out = []
    for name, value in attrs.items():
        if not _NAME.match(name):
            raise ValueError(f"attribute name {name!r} is not a plain name")
        if value is None or value is False:
            continue
        out.append(f" {name}" if value is True else f' {name}="{escape(value)}"')
    return "".join(out)


def el(tag: str, attrs: Mapping[str, object] | None = None, *children: Node) -> Markup:
    """``<tag attrs>children</tag>`` with every attribute value and child escaped (unless ``Markup``)."""
    if not _NAME.match(tag):
        raise ValueError(f"tag {tag!r} is not a plain name")
    return Markup(f"<{tag}{_attrs(attrs)}>{join(children)}</{tag}>")


def void(tag: str, attrs: Mapping[str, object] | None = None) -> Markup:
    """An element without children or end tag (``input``, ``meta``, ``br``) or a self-closed SVG one."""
    if not _NAME.match(tag):
        raise ValueError(f"tag {tag!r} is not a plain name")
    return Markup(f"<{tag}{_attrs(attrs)}/>")


def href(path: str, **query: object) -> str:
    """A same-origin URL: ``path`` (built by the pages) and the query parameters that are not None."""
    if not path.startswith("/") or path.startswith("//"):
        raise ValueError(f"page links are same-origin paths, not {path[:40]!r}")
    params = {k: str(v) for k, v in query.items() if v is not None}
    return path + ("?" + urlencode(params) if params else "")


def gpu_path(uuid: str, suffix: str = "") -> str:
    """The page path of a GPU (a MIG instance's ``/`` sent as ``%2F``, as the API accepts)."""
    return f"/gpus/{quote(uuid, safe='')}{suffix}"


def time_tag(ts: datetime | None, seconds: bool = True) -> Markup:
    """A ``<time>`` in UTC; the pages' script adds the reader's local time beside it."""
    if ts is None:
        return Markup("—")
    t = ts.astimezone(UTC)
    shown = t.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M") + " UTC"
    return el("time", {"datetime": t.isoformat().replace("+00:00", "Z")}, shown)


def number(value: float | None, digits: int = 1, unit: str | None = None) -> str:
    """A value as text: thousands separated, ``digits`` decimals (none for whole numbers), the unit after it."""
    if value is None:
        return "—"
    text = f"{value:,.0f}" if float(value).is_integer() else f"{value:,.{digits}f}"
    return f"{text} {unit}" if unit else text
