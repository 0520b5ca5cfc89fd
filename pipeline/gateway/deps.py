"""What a request handler needs, read from ``app.state``: the one place routes meet the app's parts.

``build_app`` stores one ``GatewayState`` on ``app.state.gateway``; handlers take it through the ``State``
dependency and use its small helpers (page limits, GPU and metric look-ups, cached JSON responses).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import pydantic_core
from fastapi import Depends, FastAPI, Request, Response
from prometheus_client import CollectorRegistry
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from pipeline.config import GatewaySettings
from pipeline.errors import InvalidParameter, ResourceNotFound
from pipeline.gateway.cache import ResponseCache, cache_key
from pipeline.gateway.cursors import Cursors
from pipeline.gateway.export import ExportSlots
from pipeline.gateway.params import MEDIA_JSON, shown, utc
from pipeline.storage.reader import Reader

__all__ = ["GatewayState", "State", "gateway_state", "install_state", "strict_query"]


@dataclass(frozen=True, slots=True)
class GatewayState:
    """The reader, settings, optional cache, metric registry and export slots of one app."""

    reader: Reader
    settings: GatewaySettings
    cache: ResponseCache | None
    registry: CollectorRegistry
    exports: ExportSlots
    cursors: Cursors

    def page_limit(self, limit: int | None) -> int:
        """The page size a request asks for: the default when absent, 400 above the maximum."""
        if limit is None:
            return self.settings.default_limit
        if limit > self.settings.max_limit:
            raise InvalidParameter(f"limit {limit} exceeds the maximum {self.settings.max_limit}", param="limit")
        return limit

    def gpu_key(self, uuid: str) -> int:
        """The key of the GPU ``uuid``; 404 when there is none."""
        key = self.reader.gpu_key(uuid)
        if key is None:
            raise ResourceNotFound(f"GPU {shown(uuid)} not found", kind="gpu", name=uuid)
        return key

    def metric_ids(self, names: Sequence[str] | None) -> list[int] | None:
        """Ids of the metrics ``names`` (None: all); 400 naming the first unknown one."""
        if not names:
            return None
        known = self.reader.metric_ids(names)
        for name in names:
            if name not in known:
                raise InvalidParameter(f"metric `{name[:128]}` is not a known metric", param="metric")
        return sorted(set(known.values()))

    def check_span(self, start: datetime, end: datetime, max_s: float, param: str = "start_time") -> None:
        """400 naming ``param`` when ``[start, end]`` spans more than ``max_s`` seconds."""
        if (end - start).total_seconds() > max_s:
            raise InvalidParameter(
                f"the window {start.isoformat()}..{end.isoformat()} spans more than {_span(max_s)}, at most "
                "that per request: narrow start_time/end_time",
                param=param,
            )

    def is_recent(self, end_time: datetime | None) -> bool:
        """Whether a window ending at ``end_time`` (None: now) is recent enough to cache only briefly."""
        recent = timedelta(seconds=self.settings.recent_window_s)
        return end_time is None or utc(end_time) >= datetime.now(UTC) - recent

    def cached_json(
        self,
        route: str,
        key: dict[str, Any] | None,
        ttl_s: float,
        produce: Callable[[], BaseModel | dict[str, Any] | bytes],
    ) -> Response:
        """Serve from the cache when allowed, else produce, store and serve (JSON; blocking: call it in a thread).

        ``produce`` returns plain data (dicts, lists, datetimes), serialised in one ``pydantic_core``
        call, or the JSON bytes themselves: never a model object per row (the response models only
        document the shape).
        """
        cache = self.cache if key is not None and ttl_s > 0 else None
        k = cache_key(route, key or {}) if cache is not None else ""
        if cache is not None and (hit := cache.get(k)) is not None:
            return Response(hit, media_type=MEDIA_JSON, headers=_HIT)
        value = produce()
        if isinstance(value, bytes):
            body = value
        elif isinstance(value, BaseModel):
            body = value.model_dump_json().encode()
        else:
            body = pydantic_core.to_json(value)
        if cache is not None:
            cache.set(k, body, ttl_s)
        return Response(body, media_type=MEDIA_JSON, headers={"X-Cache": "miss"} if cache is not None else None)

    async def cached(
        self,
        route: str,
        key: dict[str, Any] | None,
        ttl_s: float,
        produce: Callable[[], BaseModel | dict[str, Any] | bytes],
    ) -> Response:
        """``cached_json`` for an ``async`` handler: a body this replica holds is served on the event loop
        (no thread, no round trip); anything else runs ``cached_json`` in the thread pool."""
        if self.cache is not None and key is not None and ttl_s > 0:
            hit = self.cache.lookup(cache_key(route, key))
            if hit is not None:
                return Response(hit, media_type=MEDIA_JSON, headers=_HIT)
        return await run_in_threadpool(self.cached_json, route, key, ttl_s, produce)


_HIT = {"X-Cache": "hit"}


def _span(seconds: float) -> str:
    days, rest = divmod(seconds, 86400)
    return f"{days:.0f} days" if rest == 0 else f"{seconds:.0f} seconds"


def install_state(app: FastAPI, state: GatewayState) -> None:
    """Attach ``state`` to ``app`` (done once, by ``build_app``)."""
    app.state.gateway = state


async def gateway_state(request: Request) -> GatewayState:
    """The ``GatewayState`` of the app serving ``request`` (async: no thread hop for a dictionary read)."""
    state: GatewayState = request.app.state.gateway
    return state


State = Annotated[GatewayState, Depends(gateway_state)]

_Shape = tuple[frozenset[str], frozenset[str], frozenset[str]]
_SHAPES: dict[int, _Shape] = {}


async def strict_query(request: Request) -> None:
    """400 for a query parameter the route does not declare, or a single-valued one given twice.

    A router-level dependency: a misspelt parameter (``start=`` for ``start_time=``) or a repeated
    filter would otherwise be ignored silently and answer a different question than the one asked.
    """
    names, multi, integers = _shape(request.scope["route"])
    query = request.query_params
    unknown = list(dict.fromkeys(k for k in query if k not in names))
    if unknown:
        what = "parameters" if len(unknown) > 1 else "parameter"
        shown = ", ".join(u[:64] for u in unknown[:10])
        raise InvalidParameter(f"unknown {what} {shown}; this route takes {', '.join(sorted(names))}", param=unknown[0])
    for name in query:
        if name not in multi and len(values := query.getlist(name)) > 1:
            raise InvalidParameter(f"{name} is given {len(values)} times; it takes one value", param=name)
        if name in integers and not (query[name].isascii() and query[name].isdigit()):
            raise InvalidParameter(f"{name} `{query[name][:32]}` is not a whole number like 1000", param=name)


def _shape(route: Any) -> _Shape:
    """The query parameters a route declares, those that take a list, and the integers (once per route)."""
    shape = _SHAPES.get(id(route))
    if shape is None:
        params = route.dependant.query_params
        names = frozenset(p.alias for p in params)
        multi = frozenset(p.alias for p in params if _is_list(p.field_info.annotation))
        # Python's int() takes "1_000" and " 7": the API takes digits only.
        integers = frozenset(p.alias for p in params if int in typing.get_args(p.field_info.annotation))
        shape = _SHAPES[id(route)] = (names, multi, integers)
    return shape


def _is_list(annotation: Any) -> bool:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_is_list(a) for a in typing.get_args(annotation))
    return typing.get_origin(annotation) in (list, tuple, set, frozenset)
