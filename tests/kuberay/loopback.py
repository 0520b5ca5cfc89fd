"""A loopback Kubernetes API server for the KubeRay client's tests (the one fake these tests allow).

It serves the REST paths the client uses, keeps objects in memory, and honours the patch types
the client sends: server-side apply (``application/apply-patch+yaml``, creating or merging, with a
required fieldManager), RFC 6902 JSON patch (``test`` failures answer 422 as the real server does)
and RFC 7386 merge patch. Errors are ``Status`` objects; tests inject 404/409/422/500 on demand
and observe every request. Discovery (``/version``, ``/api``, ``/apis``, each group version's
resources) comes from :mod:`tests.kuberay.discovery`, for Helm.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

from tests.kuberay.discovery import discovery_document

Key = tuple[str, str, str, str, str]  # group, version, namespace ("" if cluster-scoped), plural, name

_GROUPED = re.compile(
    r"^/apis/(?P<group>[^/]+)/(?P<version>[^/]+)(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>[^/]+)"
    r"(?:/(?P<name>[^/]+)(?P<status>/status)?)?$"
)
_CORE_NAMESPACED = re.compile(
    r"^/api/(?P<version>v1)/namespaces/(?P<ns>[^/]+)/(?P<plural>[^/]+)(?:/(?P<name>[^/]+)(?P<status>/status)?)?$"
)
_CORE_CLUSTER = re.compile(r"^/api/(?P<version>v1)/(?P<plural>[^/]+)(?:/(?P<name>[^/]+)(?P<status>/status)?)?$")


@dataclass
class Request:
    """One request as the server saw it."""

    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str
    body: Any
    authorization: str


@dataclass
class _Failure:
    method: str
    path_contains: str
    code: int
    reason: str
    times: int


@dataclass
class _Route:
    key: Key
    collection: bool
    status: bool


class PatchFailed(Exception):
    """A JSON patch operation could not be applied (the server answers 422)."""


def apply_json_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """RFC 6902 on a copy of ``doc``: add, remove, replace, move, copy, test."""
    doc = copy.deepcopy(doc)
    for op in ops:
        kind, path = op.get("op"), op.get("path", "")
        if kind == "test":
            if _get(doc, path) != op.get("value"):
                raise PatchFailed(f"test of {path} failed: found {_get(doc, path)!r}, wanted {op.get('value')!r}")
        elif kind in ("add", "replace"):
            if kind == "replace":
                _get(doc, path)  # must exist
            doc = _put(doc, path, copy.deepcopy(op.get("value")), insert=kind == "add")
        elif kind == "remove":
            doc = _remove(doc, path)
        elif kind in ("copy", "move"):
            value = copy.deepcopy(_get(doc, op["from"]))
            if kind == "move":
                doc = _remove(doc, op["from"])
            doc = _put(doc, path, value, insert=True)
        else:
            raise PatchFailed(f"unknown op {kind!r}")
    return doc


def _tokens(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchFailed(f"bad pointer {path!r}")
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def _get(doc: Any, path: str) -> Any:
    for token in _tokens(path):
        try:
            doc = doc[int(token)] if isinstance(doc, list) else doc[token]
        except (KeyError, IndexError, ValueError, TypeError):
            raise PatchFailed(f"path {path} does not exist") from None
    return doc


def _put(doc: Any, path: str, value: Any, *, insert: bool) -> Any:
    tokens = _tokens(path)
    if not tokens:
        return value
    parent = _get(doc, "".join("/" + t.replace("~", "~0").replace("/", "~1") for t in tokens[:-1]))
    last = tokens[-1]
    if isinstance(parent, list):
        if last == "-":
            parent.append(value)
            return doc
        index = int(last)
        if index > len(parent):
            raise PatchFailed(f"index {index} out of range in {path}")
        if insert:
            parent.insert(index, value)
        else:
            parent[index] = value
    elif isinstance(parent, dict):
        parent[last] = value
    else:
        raise PatchFailed(f"cannot set {path}")
    return doc


def _remove(doc: Any, path: str) -> Any:
    tokens = _tokens(path)
    parent = _get(doc, "".join("/" + t.replace("~", "~0").replace("/", "~1") for t in tokens[:-1]))
    try:
        if isinstance(parent, list):
            del parent[int(tokens[-1])]
        else:
            del parent[tokens[-1]]
    except (KeyError, IndexError, ValueError):
        raise PatchFailed(f"path {path} does not exist") from None
    return doc


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 merge patch (``None`` deletes)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


class LoopbackApiServer:
    """In-memory API server on 127.0.0.1 (an ephemeral port), run in a daemon thread."""

    def __init__(self) -> None:
        self.objects: dict[Key, dict[str, Any]] = {}
        self.requests: list[Request] = []
        self.required_token: str | None = None
        self.on_get: Callable[[Key, LoopbackApiServer], None] | None = None
        self.on_request: Callable[[str, Key, LoopbackApiServer], None] | None = None
        self._failures: list[_Failure] = []
        self._lock = threading.RLock()
        self._version = 0
        server = self
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(server))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="loopback-api", daemon=True
        )

    @property
    def url(self) -> str:
        """Base URL for ``kubernetes.client.Configuration.host``."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> LoopbackApiServer:
        """Start serving."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    # --- test controls ------------------------------------------------------------------------

    def fail(self, method: str, path_contains: str, code: int, *, reason: str = "", times: int = 1) -> None:
        """Answer the next ``times`` matching requests with a ``Status`` of HTTP ``code``."""
        with self._lock:
            self._failures.append(_Failure(method.upper(), path_contains, code, reason, times))

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Store an object directly (as if another client had created it)."""
        key = _key_of(obj)
        with self._lock:
            stored = self._stamp(copy.deepcopy(obj), None)
            self.objects[key] = stored
            return copy.deepcopy(stored)

    def obj(self, group: str, version: str, namespace: str, plural: str, name: str) -> dict[str, Any]:
        """A copy of a stored object (KeyError if absent)."""
        with self._lock:
            return copy.deepcopy(self.objects[(group, version, namespace, plural, name)])

    def set_status(self, key: Key, status: dict[str, Any]) -> None:
        """Replace an object's status, as the operator would."""
        with self._lock:
            self.objects[key]["status"] = copy.deepcopy(status)

    def matching(self, method: str, path_contains: str = "") -> list[Request]:
        """Requests seen with this method whose path contains ``path_contains``."""
        with self._lock:
            return [r for r in self.requests if r.method == method and path_contains in r.path]

    # --- internals -----------------------------------------------------------------------------

    def _stamp(self, obj: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
        self._version += 1
        meta = obj.setdefault("metadata", {})
        meta["resourceVersion"] = str(self._version)
        if previous is None:
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
            meta["generation"] = 1
        else:
            pmeta = previous.get("metadata", {})
            meta["uid"] = pmeta.get("uid")
            meta["creationTimestamp"] = pmeta.get("creationTimestamp")
            gen = int(pmeta.get("generation", 1))
            meta["generation"] = gen + 1 if obj.get("spec") != previous.get("spec") else gen
        return obj

    def dependents(self, key: Key) -> list[Key]:
        """Objects whose ownerReferences name the object at ``key``."""
        with self._lock:
            uid = self.objects[key].get("metadata", {}).get("uid")
            return [
                k
                for k, o in self.objects.items()
                if any(r.get("uid") == uid for r in o.get("metadata", {}).get("ownerReferences") or ())
            ]

    def _delete(self, key: Key, propagation: str) -> None:
        # Foreground: the owner goes only after its dependents (done at once here). Background: the
        # owner goes now and the garbage collector removes dependents later, so they are still
        # there when the next request arrives. Orphan: dependents stay, without the reference.
        uid = self.objects[key].get("metadata", {}).get("uid")
        for dependent in self.dependents(key):
            if propagation == "Foreground":
                del self.objects[dependent]
            elif propagation == "Orphan":
                meta = self.objects[dependent]["metadata"]
                meta["ownerReferences"] = [r for r in meta["ownerReferences"] if r.get("uid") != uid]
        del self.objects[key]

    def _take_failure(self, method: str, path: str) -> _Failure | None:
        with self._lock:
            for failure in self._failures:
                if failure.method == method and failure.path_contains in path and failure.times > 0:
                    failure.times -= 1
                    return failure
        return None


def _key_of(obj: dict[str, Any]) -> Key:
    group, _, version = str(obj["apiVersion"]).rpartition("/")
    plural = {
        "Ingress": "ingresses",
        "Namespace": "namespaces",
        "RayCluster": "rayclusters",
        "RayJob": "rayjobs",
        "RayService": "rayservices",
    }.get(obj["kind"], obj["kind"].lower() + "s")
    meta = obj["metadata"]
    return group, version, str(meta.get("namespace", "")), plural, meta["name"]


def _route(path: str) -> _Route | None:
    for pattern, grouped in ((_GROUPED, True), (_CORE_NAMESPACED, False), (_CORE_CLUSTER, False)):
        m = pattern.match(path)
        if m:
            parts = m.groupdict()
            group = parts["group"] if grouped else ""
            key: Key = (group, parts["version"], parts.get("ns") or "", parts["plural"], parts.get("name") or "")
            return _Route(key, parts.get("name") is None, parts.get("status") is not None)
    return None


def _status_body(code: int, message: str, reason: str, key: Key | None = None) -> dict[str, Any]:
    details: dict[str, Any] = {}
    if key is not None:
        details = {"name": key[4], "group": key[0], "kind": key[3]}
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success" if code < 400 else "Failure",
        "message": message,
        "reason": reason,
        "details": details,
        "code": code,
    }


_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    409: "AlreadyExists",
    415: "UnsupportedMediaType",
    422: "Invalid",
    500: "InternalError",
}


def _handler_for(server: LoopbackApiServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms delayed-ACK stalls

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return

        def _send(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, code: int, message: str, key: Key | None = None, reason: str = "") -> None:
            self._send(code, _status_body(code, message, reason or _REASONS.get(code, "Unknown"), key))

        def _handle(self) -> None:
            split = urlsplit(self.path)
            query = parse_qs(split.query)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            body: Any = None
            if raw:
                try:
                    body = yaml.safe_load(raw) if content_type.endswith("yaml") else json.loads(raw)
                except (ValueError, yaml.YAMLError):
                    self._error(400, "body is not valid JSON/YAML")
                    return
            method = self.command
            with server._lock:
                server.requests.append(
                    Request(method, split.path, query, content_type, body, self.headers.get("Authorization", ""))
                )
            if server.required_token is not None and self.headers.get("Authorization") != (
                f"Bearer {server.required_token}"
            ):
                self._error(401, "Unauthorized")
                return
            failure = server._take_failure(method, split.path)
            if failure is not None:
                self._error(
                    failure.code, f"injected failure {failure.code} for {method} {split.path}", reason=failure.reason
                )
                return
            document = discovery_document(split.path) if method == "GET" else None
            if document is not None:
                self._send(200, document)
                return
            route = _route(split.path)
            if route is None:
                self._error(404, f"the server could not find the requested resource ({split.path})")
                return
            with server._lock:
                self._dispatch(method, route, query, content_type, body)

        def _dispatch(
            self, method: str, route: _Route, query: dict[str, list[str]], content_type: str, body: Any
        ) -> None:
            key = route.key
            what = f'{key[3]} "{key[4]}"'
            if server.on_request is not None:
                server.on_request(method, key, server)
            current = server.objects.get(key)
            if route.collection:
                if method != "POST":
                    self._error(405, "only POST on collections here")
                    return
                if not isinstance(body, dict) or not body.get("metadata", {}).get("name"):
                    self._error(422, "metadata.name: Required value", key)
                    return
                key = (*key[:4], body["metadata"]["name"])
                if key in server.objects:
                    self._error(409, f'{key[3]} "{key[4]}" already exists', key)
                    return
                stored = server._stamp(copy.deepcopy(body), None)
                server.objects[key] = stored
                self._send(201, stored)
                return
            if method == "GET":
                if server.on_get is not None:
                    server.on_get(key, server)
                    current = server.objects.get(key)
                if current is None:
                    self._error(404, f"{what} not found", key)
                else:
                    self._send(200, current)
            elif method == "DELETE":
                if current is None:
                    self._error(404, f"{what} not found", key)
                    return
                server._delete(key, (query.get("propagationPolicy") or ["Background"])[0])
                self._send(200, _status_body(200, "", "", key))
            elif method == "PATCH":
                self._patch(key, what, current, query, content_type, body, route.status)
            else:
                self._error(405, f"method {method} not supported")

        def _patch(
            self,
            key: Key,
            what: str,
            current: dict[str, Any] | None,
            query: dict[str, list[str]],
            content_type: str,
            body: Any,
            status_only: bool,
        ) -> None:
            dry_run = "All" in query.get("dryRun", [])
            if content_type == "application/apply-patch+yaml":
                if not query.get("fieldManager"):
                    self._error(400, "PatchOptions.meta.k8s.io is invalid: fieldManager: Required value", key)
                    return
                if not isinstance(body, dict) or body.get("metadata", {}).get("name") != key[4]:
                    self._error(400, "the name of the object does not match the name on the URL", key)
                    return
                merged = merge_patch(current or {}, body)
                code = 200 if current is not None else 201
            elif current is None:
                self._error(404, f"{what} not found", key)
                return
            elif content_type == "application/json-patch+json":
                if not isinstance(body, list):
                    self._error(400, "json patch body must be a list of operations", key)
                    return
                try:
                    merged = apply_json_patch(current, body)
                except PatchFailed as exc:
                    self._error(422, f"{what} is invalid: {exc}", key)
                    return
                code = 200
            elif content_type == "application/merge-patch+json":
                patch = {"status": body.get("status")} if status_only and isinstance(body, dict) else body
                merged = merge_patch(current, patch)
                code = 200
            else:
                self._error(415, f"unsupported patch content type {content_type!r}", key)
                return
            if dry_run:
                self._send(code, merged)
                return
            stored = server._stamp(merged, current)
            server.objects[key] = stored
            self._send(code, stored)

        def _safely(self) -> None:
            # A bug in a test hook answers 500 (a ServerError in the test) instead of a dropped connection.
            try:
                self._handle()
            except Exception as exc:  # reported to the client, which raises it
                self._error(500, f"loopback server error: {exc!r}")

        do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _safely  # noqa: N815 (http.server names them)

    return Handler


__all__ = ["LoopbackApiServer", "PatchFailed", "Request", "apply_json_patch", "merge_patch"]
