"""One executable schema per Admin API version, composed from the SDL files in `sdl/` (the contract).

`base.graphql` holds what every version shares; each version adds the parts that Shopify changed in this
subset (where `assignedFulfillmentOrders` lives, `FULFILLMENT_UNSUBMITTED`, the sort keys). The schemas
are built once, when this module is imported.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Final

from ariadne import make_executable_schema
from graphql import GraphQLSchema

from cancelflow.graphql.resolvers import bindables
from cancelflow.graphql.versions import VERSIONS, since

SDL_DIR: Final = Path(__file__).with_name("sdl")


def parts(version: str) -> list[str]:
    """The SDL files of `version`, base first, in the order they are applied."""
    if version not in VERSIONS:
        raise KeyError(version)
    names = ["base.graphql"]
    names.append(
        "query_root_assigned_2024_07.graphql"
        if since(version, "2024-07")
        else "shop_assigned_2024_01.graphql"
    )
    if since(version, "2024-04"):
        names.append("assignment_unsubmitted_2024_04.graphql")
    if not since(version, "2025-10"):
        names.append("sort_relevance_until_2025_07.graphql")
    if since(version, "2024-04"):
        names.append("sort_updated_at_2024_04.graphql")
    return names


@cache
def _text(name: str) -> str:
    return (SDL_DIR / name).read_text(encoding="utf-8")


def type_defs(version: str) -> list[str]:
    return [_text(name) for name in parts(version)]


def build(version: str) -> GraphQLSchema:
    return make_executable_schema(type_defs(version), *bindables(version))


SCHEMAS: Final[dict[str, GraphQLSchema]] = {version: build(version) for version in VERSIONS}
