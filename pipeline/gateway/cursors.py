"""Opaque page cursors, bound to the query that made them and signed.

A cursor holds the last row's sort key and a tag: an HMAC-SHA256 over the key and the query's
binding (the route, the GPU, the window and filters as given, the order). A cursor replayed on
another GPU, window, filter or order, or edited by hand, fails the tag and is a 400 naming
``cursor``. The HMAC key is ``gateway.cursor_secret`` when set; otherwise it is derived from the API
tokens, which every replica shares (so a cursor from one replica pages on another).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Iterable
from typing import Any

from pipeline.errors import InvalidParameter

__all__ = ["Cursors"]

_TAG_BYTES = 12


class Cursors:
    """Encodes and checks the cursors of one gateway (one HMAC key)."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _tag(self, kind: str, values: list[Any], binding: dict[str, Any]) -> str:
        blob = json.dumps([kind, values, binding], sort_keys=True, separators=(",", ":"), default=str)
        digest = hmac.new(self._key, blob.encode(), hashlib.sha256).digest()[:_TAG_BYTES]
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def encode(self, kind: str, values: Iterable[Any], binding: dict[str, Any] | None = None) -> str:
        """An opaque cursor: the last row's sort key, tagged with the query it pages."""
        vals = list(values)
        raw = json.dumps([kind, *vals, self._tag(kind, vals, binding or {})], separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def decode(
        self, kind: str, cursor: str, types: tuple[type, ...], binding: dict[str, Any] | None = None
    ) -> list[Any]:
        """The sort key in a cursor of ``kind`` made for this ``binding``; 400 naming ``cursor`` otherwise."""
        values = _parse(kind, cursor, types)
        given = values.pop()
        if not isinstance(given, str) or not hmac.compare_digest(given, self._tag(kind, values, binding or {})):
            raise InvalidParameter(
                f"cursor `{cursor[:64]}` does not belong to this query (another GPU, window, filter or order)",
                param="cursor",
            )
        return values


def _parse(kind: str, cursor: str, types: tuple[type, ...]) -> list[Any]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if not isinstance(data, list) or len(data) != len(types) + 2 or data[0] != kind:
            raise ValueError
        values = data[1:]
        for value, typ in zip(values, (*types, str), strict=True):
            # bool is an int in Python; a cursor of ours never holds one.
            if not isinstance(value, typ) or isinstance(value, bool) or (isinstance(value, str) and "\x00" in value):
                raise ValueError
            if isinstance(value, str):
                value.encode()  # a lone surrogate (UnicodeEncodeError) cannot be a database value
            if isinstance(value, int) and not -(2**62) < value < 2**62:
                raise ValueError
        return values
    except (ValueError, binascii.Error, UnicodeDecodeError, TypeError):
        raise InvalidParameter(f"cursor `{cursor[:64]}` is not a valid {kind} cursor", param="cursor") from None
