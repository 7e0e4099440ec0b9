"""Each version's schema against Shopify's, as recorded in the research file: the SDL of its section 8
(the 2026-01 shape) with the version differences of its section 9 applied.

Every type served must be in that SDL (or be one of the stubs it lists), with the same interfaces; every
field served must be there with the same type (nullability included), the same arguments (none left
out, same types and defaults) and the same deprecation; every enum and both root types must be whole.
"""

from __future__ import annotations

import os
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from graphql import (
    DocumentNode,
    EnumTypeDefinitionNode,
    GraphQLEnumType,
    GraphQLInterfaceType,
    GraphQLObjectType,
    GraphQLSchema,
    InterfaceTypeDefinitionNode,
    ObjectTypeDefinitionNode,
    parse,
    print_ast,
)

from cancelflow.graphql.schema import SCHEMAS
from cancelflow.graphql.versions import VERSIONS, since

RESEARCH = Path(
    os.environ.get("CANCELFLOW_SHOPIFY_GRAPHQL_RESEARCH", "/work/shared/research/shopify-graphql.md")
)
# Section 9's columns, in order, and the versions each stands for.
COLUMNS = ("2024-01", "2024-04", "2024-07", "2025-01", "2025-10")
# Where section 9 records conflicting sources, the choice this server made (see DESIGN-NOTES.md).
DECIDED = {("FulfillmentOrderSortKeys.RELEVANCE", "2025-01"): True}
SHOP_DEPRECATION = "Use `QueryRoot.assignedFulfillmentOrders` instead."


def _text() -> str:
    if not RESEARCH.exists():
        pytest.skip(f"research file not found at {RESEARCH} (set CANCELFLOW_SHOPIFY_GRAPHQL_RESEARCH)")
    return RESEARCH.read_text()


def _section(text: str, number: int) -> str:
    start = re.search(rf"^## {number}\. .*$", text, re.MULTILINE)
    assert start is not None, f"section {number}"
    end = re.search(r"^## \d+\. ", text[start.end() :], re.MULTILINE)
    return text[start.end() : start.end() + end.start() if end else None]


@cache
def research_sdl() -> tuple[DocumentNode, frozenset[str]]:
    """The section-8 SDL, parsed, and the names of the out-of-scope stubs it lists."""
    section = _section(_text(), 8)
    block = re.search(r"```graphql\n(.*?)```", section, re.DOTALL)
    assert block is not None
    stubs_comment = re.search(r"# stubs \(out of scope\):(.*?)(?:\n[^#]|\Z)", block.group(1), re.DOTALL)
    assert stubs_comment is not None
    stubs = {
        name.replace("enum ", "").strip()
        for name in stubs_comment.group(1).replace("#", "").replace("\n", " ").split(",")
    }
    return parse(block.group(1)), frozenset(stubs)


@cache
def differences() -> dict[str, dict[str, bool]]:
    """Section 9's rows about this subset: item -> first version of each column -> present?"""
    rows: dict[str, dict[str, bool]] = {}
    for line in _section(_text(), 9).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 1 + len(COLUMNS) or not cells[0].startswith("`"):
            continue
        item = cells[0].split("`")[1]
        presence: dict[str, bool] = {}
        for column, cell in zip(COLUMNS, cells[1:], strict=True):
            if cell.startswith(("present", "same")):
                presence[column] = True
            elif cell.startswith("absent"):
                presence[column] = False
            else:
                presence[column] = DECIDED[(item, column)]
        rows[item] = presence
    return rows


def present_in(item: str, version: str) -> bool:
    presence = differences()[item]
    column = [c for c in COLUMNS if since(version, c)][-1]
    return presence[column]


def expected(version: str) -> dict[str, Any]:
    """The research SDL's definitions as plain data, with `version`'s differences applied."""
    document, _ = research_sdl()
    types: dict[str, Any] = {}
    for definition in document.definitions:
        if isinstance(definition, ObjectTypeDefinitionNode | InterfaceTypeDefinitionNode):
            fields = {}
            for field in definition.fields or ():
                fields[field.name.value] = {
                    "type": print_ast(field.type),
                    "args": {
                        a.name.value: (
                            print_ast(a.type),
                            print_ast(a.default_value) if a.default_value else None,
                        )
                        for a in field.arguments or ()
                    },
                    "deprecated": any(d.name.value == "deprecated" for d in field.directives or ()),
                }
            types[definition.name.value] = {
                "interfaces": sorted(i.name.value for i in definition.interfaces or ()),
                "fields": fields,
            }
        elif isinstance(definition, EnumTypeDefinitionNode):
            types[definition.name.value] = {"values": [v.name.value for v in definition.values or ()]}
    assert differences().keys() >= {
        "QueryRoot.assignedFulfillmentOrders",
        "FULFILLMENT_UNSUBMITTED",
        "FulfillmentOrderSortKeys.RELEVANCE",
        "FulfillmentOrderSortKeys.UPDATED_AT",
    }
    if not present_in("QueryRoot.assignedFulfillmentOrders", version):
        del types["QueryRoot"]["fields"]["assignedFulfillmentOrders"]
    else:
        types["Shop"]["fields"]["assignedFulfillmentOrders"]["deprecated"] = True
    statuses = types["FulfillmentOrderAssignmentStatus"]["values"]
    if not present_in("FULFILLMENT_UNSUBMITTED", version):
        statuses.remove("FULFILLMENT_UNSUBMITTED")
    sort_keys = ["ID"]
    for value in ("RELEVANCE", "UPDATED_AT"):
        if present_in(f"FulfillmentOrderSortKeys.{value}", version):
            sort_keys.append(value)
    types["FulfillmentOrderSortKeys"]["values"] = sort_keys
    return types


def served(schema: GraphQLSchema) -> dict[str, Any]:
    types: dict[str, Any] = {}
    for name, graphql_type in schema.type_map.items():
        if name.startswith("__"):
            continue
        if isinstance(graphql_type, GraphQLObjectType | GraphQLInterfaceType):
            types[name] = {
                "interfaces": sorted(i.name for i in graphql_type.interfaces),
                "fields": {
                    field_name: {
                        "type": str(field.type),
                        "args": {
                            arg_name: (
                                str(arg.type),
                                None
                                if arg.default_value is None
                                or arg.ast_node is None
                                or arg.ast_node.default_value is None
                                else print_ast(arg.ast_node.default_value),
                            )
                            for arg_name, arg in field.args.items()
                        },
                        "deprecated": field.deprecation_reason is not None,
                    }
                    for field_name, field in graphql_type.fields.items()
                },
            }
        elif isinstance(graphql_type, GraphQLEnumType):
            types[name] = {"values": list(graphql_type.values)}
    return types


BUILTIN_SCALARS = {"String", "Boolean", "Int", "Float", "ID"}


@pytest.mark.parametrize("version", VERSIONS)
def test_the_schema_is_a_faithful_subset_of_shopifys(version: str) -> None:
    want = expected(version)
    _, stubs = research_sdl()
    document, _ = research_sdl()
    scalars = {d.name.value for d in document.definitions if d.kind == "scalar_type_definition"}
    have = served(SCHEMAS[version])
    for name in SCHEMAS[version].type_map:
        if name.startswith("__") or name in BUILTIN_SCALARS:
            continue
        assert name in want or name in stubs or name in scalars, f"{version}: {name} is not Shopify's"
    for name, ours in have.items():
        if name in stubs:
            continue
        theirs = want[name]
        if "values" in theirs:
            assert ours["values"] == theirs["values"], f"{version}: enum {name}"
            continue
        assert ours["interfaces"] == theirs["interfaces"], f"{version}: {name} interfaces"
        for field_name, field in ours["fields"].items():
            where = f"{version}: {name}.{field_name}"
            if name == "Shop" and field_name in ("name",):
                continue  # Shop is a stub in the research file, except for assignedFulfillmentOrders
            assert field_name in theirs["fields"], where
            assert field == theirs["fields"][field_name], where


@pytest.mark.parametrize("version", VERSIONS)
def test_the_root_types_and_enums_are_served_whole(version: str) -> None:
    want = expected(version)
    have = served(SCHEMAS[version])
    for root in ("QueryRoot", "Mutation"):
        assert set(have[root]["fields"]) == set(want[root]["fields"]), f"{version}: {root}"
    assert set(have["Shop"]["fields"]) >= set(want["Shop"]["fields"])
    for name, definition in want.items():
        if "values" in definition:
            assert have[name]["values"] == definition["values"], f"{version}: {name}"


@pytest.mark.parametrize("version", VERSIONS)
def test_the_shops_connection_is_deprecated_in_favour_of_the_roots(version: str) -> None:
    shop = SCHEMAS[version].type_map["Shop"]
    assert isinstance(shop, GraphQLObjectType)
    reason = shop.fields["assignedFulfillmentOrders"].deprecation_reason
    assert reason == (SHOP_DEPRECATION if since(version, "2024-07") else None)


def test_the_research_differences_are_read_as_recorded() -> None:
    """The table parser reads section 9 as a person would (a guard on the test above)."""
    assert [
        present_in("QueryRoot.assignedFulfillmentOrders", v) for v in ("2024-01", "2024-04", "2024-07")
    ] == [
        False,
        False,
        True,
    ]
    assert [present_in("FULFILLMENT_UNSUBMITTED", v) for v in ("2024-01", "2024-04", "unstable")] == [
        False,
        True,
        True,
    ]
    assert [
        present_in("FulfillmentOrderSortKeys.RELEVANCE", v) for v in ("2024-10", "2025-07", "2025-10")
    ] == [
        True,
        True,
        False,
    ]
    assert [present_in("FulfillmentOrderSortKeys.UPDATED_AT", v) for v in ("2024-01", "2024-04")] == [
        False,
        True,
    ]
