"""The pages' routes, their HTML error pages, and the token prompt's sign-in and sign-out.

``page_router(view, group)`` is built once per app (it holds the replica's rate snapshots). Page
routes are left out of the OpenAPI spec (they are HTML for people; the API documents the JSON);
their errors are pages too, with the status the API would give. ``POST /login`` takes the token
the prompt sends in its ``Authorization`` header — checked by ``BearerAuth`` like any API call —
and stores it in the pages' cookie; ``POST /logout`` clears it.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from pipeline.errors import DatabaseUnavailable, InvalidParameter, PipelineError, ResourceNotFound, StorageError
from pipeline.gateway import auth
from pipeline.gateway.auth import COOKIE, PageAccess, cookie_value
from pipeline.gateway.deps import State, strict_query
from pipeline.gateway.pages import fleet_page, gpu_page, pipeline_page, usage_page
from pipeline.gateway.pages.catalog import parse_window
from pipeline.gateway.pages.html import el, void
from pipeline.gateway.pages.layout import document, html_response, message_page
from pipeline.gateway.pages.pipeline_page import PipelineView, Rates
from pipeline.gateway.params import EndParam, StartParam, UuidParam, reject_nul
from pipeline.gateway.problems import Problem
from pipeline.gateway.routes.telemetry import window_response

__all__ = ["PAGE_ACCESS", "PageRoute", "is_page", "page_router"]

_PAGES = frozenset({"/", "/usage", "/pipeline", "/logout"})


def is_page(path: str) -> bool:
    """Whether ``path`` is a page (the token cookie counts there): never ``/api/...``, ``/metrics`` or ``/login``."""
    return path in _PAGES or path.startswith("/gpus/")


class PageRoute(APIRoute):
    """A route whose errors are HTML pages (with the API's status codes), not problem+json."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def page(request: Request) -> Response:
            signed_in = auth.enabled(request.app.state.gateway.settings)
            try:
                return await handle(request)
            except ResourceNotFound as exc:
                return message_page(404, "Not found", str(exc), signed_in)
            except InvalidParameter as exc:
                return message_page(400, "Bad request", str(exc), signed_in)
            except (DatabaseUnavailable, StorageError) as exc:
                return message_page(503, "The database did not answer", str(exc), signed_in)
            except PipelineError:
                return message_page(500, "Something failed", "the gateway failed to answer this page", signed_in)
            except RequestValidationError as exc:
                detail = "; ".join(str(e.get("msg", "invalid")) for e in exc.errors())
                return message_page(422, "Bad request", detail, signed_in)
            except HTTPException as exc:
                return message_page(exc.status_code, "Error", str(exc.detail), signed_in)

        return page


def _prompt_body(why: str) -> list[Any]:
    return [
        el("h1", None, "Sign in"),
        el(
            "p",
            None,
            "This gateway needs an API token. Paste a token with the ",
            el("code", None, "read"),
            " scope once: it is kept in an HttpOnly cookie for this browser session, never in the address bar.",
        ),
        el("p", {"class": "bad"}, "The saved token is no longer accepted; paste a current one.")
        if why == "invalid"
        else None,
        el(
            "form",
            {"id": "login", "class": "prompt", "method": "post", "action": "/login"},
            el("label", {"for": "token"}, "API token"),
            void(
                "input",
                {
                    "type": "password",
                    "id": "token",
                    "name": "token",
                    "autocomplete": "off",
                    "required": True,
                    "autofocus": True,
                    "spellcheck": "false",
                },
            ),
            el("p", None, el("button", {"type": "submit"}, "Sign in")),
        ),
        el("p", {"id": "login-msg", "role": "status", "aria-live": "polite"}),
        el(
            "noscript",
            None,
            el(
                "p",
                None,
                "Signing in needs JavaScript. Without it, call the API with ",
                el("code", None, "Authorization: Bearer <token>"),
                ".",
            ),
        ),
        el("p", {"class": "note"}, "python -m pipeline run prints a token for its run (api token (this run only): …)."),
    ]


async def _prompt(scope: Scope, receive: Receive, send: Send) -> None:
    """The token prompt (401), clearing a cookie whose token is no longer valid."""
    why = str((scope.get("state") or {}).get("auth", "missing"))
    response = html_response(
        document("Sign in", _prompt_body(why)), 401, headers={"WWW-Authenticate": 'Bearer realm="gpu-telemetry"'}
    )
    if why == "invalid":
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    await response(scope, receive, send)


PAGE_ACCESS = PageAccess(is_page=is_page, prompt=_prompt)


def _https(request: Request) -> bool:
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"


def _same_origin(request: Request) -> bool:
    """No ``Origin`` (not a browser's cross-site request) or one naming this host."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc.lower() == request.headers.get("host", "").lower()


def page_router(view: PipelineView | None = None, group: str = "telemetry-collectors") -> APIRouter:
    """The pages of one app: ``/pipeline`` (and the rest as they are added), sign-in and sign-out."""
    router = APIRouter(route_class=PageRoute, include_in_schema=False, dependencies=[Depends(strict_query)])
    rates = Rates()

    @router.post("/login")
    def login(request: Request, state: State) -> Response:
        """Store the (already checked) bearer token in the pages' cookie."""
        if not _same_origin(request):
            return Problem(403, "Forbidden", "sign-in is only accepted from this gateway's own pages")
        if not auth.enabled(state.settings):
            return Response(status_code=204)
        token = request.headers.get("authorization", "").partition(" ")[2].strip()
        response = Response(status_code=204, headers={"Cache-Control": "no-store"})
        response.set_cookie(
            COOKIE, cookie_value(token), path="/", httponly=True, samesite="strict", secure=_https(request)
        )
        return response

    @router.post("/logout")
    def logout() -> Response:
        """Forget the token: clear the cookie and go back to the fleet (which prompts again)."""
        response = Response(status_code=303, headers={"Location": "/", "Cache-Control": "no-store"})
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    @router.get("/")
    def fleet(
        state: State,
        metric: str | None = None,
        view: str | None = None,
        page: int | None = None,
        hostname: str | None = None,
    ) -> Response:
        """The fleet now: counts, heatmap, top GPUs, the silent ones."""
        reject_nul(metric=metric, view=view, hostname=hostname)
        title, body = fleet_page.render(state, metric, view, page, hostname)
        return html_response(document(title, body, current="/", refresh_s=10, signed_in=auth.enabled(state.settings)))

    @router.get("/gpus/{uuid:path}/export")
    def gpu_export(
        request: Request,
        state: State,
        uuid: UuidParam,
        format: Literal["csv", "arrow", "json"],
        start_time: StartParam = None,
        end_time: EndParam = None,
    ) -> Response:
        """The GPU page's download links: the window as CSV, Arrow or the first JSON page, like the API's."""
        return window_response(request, state, format, uuid, start_time, end_time, limit=state.settings.max_limit)

    @router.get("/gpus/{uuid:path}")
    def gpu(state: State, uuid: UuidParam, window: str | None = None) -> Response:
        """One GPU over a window."""
        name, _ = parse_window(window)
        title, body = gpu_page.render(state, uuid, name)
        return html_response(document(title, body, refresh_s=30, signed_in=auth.enabled(state.settings)))

    @router.get("/usage")
    def usage(state: State, group_by: str | None = None, window: str | None = None) -> Response:
        """GPU-hours and energy per group over a window."""
        reject_nul(group_by=group_by, window=window)
        title, body = usage_page.render(state, group_by, window)
        return html_response(
            document(title, body, current="/usage", refresh_s=60, signed_in=auth.enabled(state.settings))
        )

    @router.get("/pipeline")
    def pipeline(state: State) -> Response:
        """The pipeline's rates, lag, rejects, actors and scaling."""
        body = pipeline_page.render(state.reader, view, view.group if view is not None else group, rates)
        signed_in = auth.enabled(state.settings)
        return html_response(document("Pipeline", body, current="/pipeline", refresh_s=5, signed_in=signed_in))

    return router
