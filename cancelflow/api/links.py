"""Links the API hands out (`next` / `previous`, job and export URLs), never built from the request's
`Host`: a client that sends `Host: evil.example` must not get links to evil.example. They are absolute
under `CANCELFLOW_PUBLIC_BASE_URL` when it is set, else relative to the server (`/api/v1/...`)."""

from __future__ import annotations

from starlette.datastructures import URL
from starlette.requests import Request

from cancelflow.config import get_settings


def link(path: str, query: str = "") -> str:
    """`path` (starting with `/`) and an encoded `query`, under the public base URL when one is set."""
    base = (get_settings().public_base_url or "").rstrip("/")
    return f"{base}{path}" + (f"?{query}" if query else "")


def request_path(request: Request) -> str:
    """The path the client asked for, without any `root_path` a proxy strips (the base URL carries it)."""
    path = request.url.path
    root = str(request.scope.get("root_path") or "")
    return path[len(root) :] if root and path.startswith(root) else path


def same_resource(request: Request, url: URL) -> str:
    """A link to the requested resource with `url`'s query (e.g. the next page's)."""
    return link(request_path(request), url.query)
