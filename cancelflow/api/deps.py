"""Dependencies every router shares: the request's unit of work, and routes served twice (global and per
sales channel) from one definition.

`DbSession`: one transaction per request (`cancelflow.db.transaction`), committed when the endpoint
returns and its response is built, rolled back when it raises. It takes one pooled connection at its first
statement (in the endpoint's thread) and keeps it until the request's transaction ends, even when the
endpoint commits in between (an idempotency key is claimed, then the work is done). It is function-scoped: the commit happens
before the response is sent, so a client that reads its own write sees it, sends queued after commit
(`services.jobs`) leave before the answer does, and a commit that fails (the database went away) is the
error it maps to in `api.errors` (503 with `Retry-After`), never a 200. A streamed body is sent after the
commit: no transaction stays open while it streams.
"""

import functools
import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import Annotated, Any, TypeVar, get_args, get_origin

from fastapi import APIRouter, Depends, Path
from fastapi.params import Depends as DependsParam
from sqlalchemy.orm import Session

from cancelflow.db import transaction
from cancelflow.errors import NotFound

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


def db_session() -> Iterator[Session]:
    with transaction(one_connection=True) as session:
        yield session


DbSession = Annotated[Session, Depends(db_session, scope="function")]


def admin_api_version(versions: Sequence[str]) -> Callable[[str], str]:
    """The `{version}` dependency of an `/admin/api/{version}/` router serving `versions` (REST and GraphQL
    serve different sets under the same prefix, so each router makes its own). It is checked before the
    token, so an unknown version is a 404 whoever asks; the OpenAPI document lists the set as an enum."""
    known = frozenset(versions)
    listed = list(versions)

    # The annotation is evaluated here, not as a string later: it names this call's `listed`.
    def version_dependency(
        version: Annotated[str, Path(description="Admin API version.", json_schema_extra={"enum": listed})],
    ) -> str:
        if version not in known:
            raise NotFound("Not Found")
        return version

    return version_dependency


def _swap_dependency(endpoint: Endpoint, old: Callable[..., Any], new: Callable[..., Any]) -> Endpoint:
    """`endpoint` with its parameter `Annotated[T, Depends(old)]` declared `Annotated[T, Depends(new)]`
    (same name and place, so the OpenAPI parameters keep their order)."""
    signature = inspect.signature(endpoint, eval_str=True)
    parameters = []
    swapped = False
    for parameter in signature.parameters.values():
        annotation = parameter.annotation
        if get_origin(annotation) is Annotated:
            base, *extras = get_args(annotation)
            if any(isinstance(e, DependsParam) and e.dependency is old for e in extras):
                parameter = parameter.replace(annotation=Annotated[base, Depends(new)])
                swapped = True
        parameters.append(parameter)
    if not swapped:
        raise TypeError(f"{endpoint.__name__} does not depend on {old.__name__}")

    @functools.wraps(endpoint)
    def twin(*args: Any, **kwargs: Any) -> Any:
        return endpoint(*args, **kwargs)

    twin.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    return twin  # type: ignore[return-value]


class ScopedRoutes:
    """One resource served under its global prefix and its sales-channel twin: each route is written once,
    with a parameter `Annotated[T, Depends(global_scope)]`; the channel router gets the same endpoint with
    that dependency replaced by `channel_scope` (which reads the `{channel_id}` of the twin's prefix)."""

    def __init__(
        self,
        router: APIRouter,
        channel_router: APIRouter,
        *,
        global_scope: Callable[..., Any],
        channel_scope: Callable[..., Any],
    ) -> None:
        self.router = router
        self.channel_router = channel_router
        self._global_scope = global_scope
        self._channel_scope = channel_scope

    def route(self, path: str, *, methods: list[str], **kwargs: Any) -> Callable[[Endpoint], Endpoint]:
        def register(endpoint: Endpoint) -> Endpoint:
            self.router.add_api_route(path, endpoint, methods=methods, **kwargs)
            twin = _swap_dependency(endpoint, self._global_scope, self._channel_scope)
            self.channel_router.add_api_route(path, twin, methods=methods, **kwargs)
            return endpoint

        return register

    def get(self, path: str, **kwargs: Any) -> Callable[[Endpoint], Endpoint]:
        return self.route(path, methods=["GET"], **kwargs)

    def post(self, path: str, **kwargs: Any) -> Callable[[Endpoint], Endpoint]:
        return self.route(path, methods=["POST"], **kwargs)

    def put(self, path: str, **kwargs: Any) -> Callable[[Endpoint], Endpoint]:
        return self.route(path, methods=["PUT"], **kwargs)

    def patch(self, path: str, **kwargs: Any) -> Callable[[Endpoint], Endpoint]:
        return self.route(path, methods=["PATCH"], **kwargs)
