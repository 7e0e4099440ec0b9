"""Query cost and query limits against hand-computed figures (Shopify's rules, `cancelflow.graphql.cost`).

The schema is `cost_schema.graphql`, the shape of the fulfillment-order subset; every expected figure is
worked out in the comment beside it.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
from graphql import GraphQLSchema, build_schema, get_introspection_query, parse, validate
from hypothesis import HealthCheck, given, settings
from hypothesis_graphql import mutations, queries

from cancelflow.graphql.cost import actual_cost, check_query_limits, requested_cost
from cancelflow.graphql.schema import SCHEMAS
from cancelflow.graphql.versions import VERSIONS

SDL = Path(__file__).with_name("cost_schema.graphql")


@functools.cache
def schema() -> GraphQLSchema:
    return build_schema(SDL.read_text())


def cost(query: str, variables: dict[str, Any] | None = None, operation: str | None = None) -> int:
    document = parse(query)
    assert validate(schema(), document) == []
    return requested_cost(schema(), document, operation, variables)


def actual(query: str, data: dict[str, Any], variables: dict[str, Any] | None = None) -> int:
    return actual_cost(schema(), parse(query), None, variables, data)


def codes(query: str, variables: dict[str, Any] | None = None) -> list[str]:
    document = parse(query)
    assert validate(schema(), document) == []
    errors = check_query_limits(schema(), document, None, variables)
    assert all(error.extensions and "code" in error.extensions for error in errors)
    return [str(error.extensions["code"]) for error in errors if error.extensions]


class TestRequestedCost:
    def test_scalars_and_enums_cost_nothing_the_object_one(self) -> None:
        assert cost('{ fulfillmentOrder(id: "1") { id status createdAt __typename } }') == 1

    def test_nested_objects_add_one_each(self) -> None:
        # fulfillmentOrder 1 + destination 1
        assert cost('{ fulfillmentOrder(id: "1") { id destination { city } } }') == 2

    def test_the_worked_example_shape(self) -> None:
        # Shopify's products(first: 10) { variants(first: 5) }: 2 + 10 x (1 + (2 + 5 x 1)) = 82
        query = """{ assignedFulfillmentOrders(first: 10) {
            edges { node { id lineItems(first: 5) { edges { node { id sku } } } } } } }"""
        assert cost(query) == 82

    def test_a_connection_is_sized_by_last_too_and_page_info_is_in_its_two(self) -> None:
        # 2 + 7 x 1; cursor and pageInfo add nothing
        query = """{ assignedFulfillmentOrders(last: 7) {
            edges { cursor node { id } } pageInfo { hasNextPage endCursor } } }"""
        assert cost(query) == 9

    def test_edges_and_nodes_both_selected_count_their_objects_each(self) -> None:
        # 2 + 3 x (1 + 1)
        assert cost("{ assignedFulfillmentOrders(first: 3) { edges { node { id } } nodes { id } } }") == 8

    def test_three_nested_connections(self) -> None:
        # lineItems: 2 + 3 = 5; fulfillmentOrder: 1 + 5 = 6; merchant request node: 1 + 6 = 7;
        # merchantRequests: 2 + 4 x 7 = 30; fulfillment order node: 1 + 30 = 31; total: 2 + 2 x 31 = 64
        query = """{ assignedFulfillmentOrders(first: 2) { edges { node {
            merchantRequests(first: 4) { edges { node {
                fulfillmentOrder { lineItems(first: 3) { nodes { id } } } } } } } } } }"""
        assert cost(query) == 64

    def test_named_and_inline_fragments_cost_what_they_select(self) -> None:
        plain = "{ assignedFulfillmentOrders(first: 10) { nodes { id destination { city } } } }"
        named = """query { assignedFulfillmentOrders(first: 10) { nodes { ...Fo } } }
            fragment Fo on FulfillmentOrder { id ... on FulfillmentOrder { destination { city } } }"""
        assert cost(plain) == cost(named) == 2 + 10 * 2

    def test_a_fragment_spread_twice_is_counted_once_like_execution_merges_it(self) -> None:
        query = """{ fulfillmentOrder(id: "1") { ...D ...D } }
            fragment D on FulfillmentOrder { destination { city } }"""
        assert cost(query) == 2

    def test_fields_of_one_response_key_are_merged_aliases_are_not(self) -> None:
        merged = '{ fulfillmentOrder(id: "1") { id } fulfillmentOrder(id: "1") { destination { id } } }'
        aliased = '{ a: fulfillmentOrder(id: "1") { id } b: fulfillmentOrder(id: "2") { id } }'
        assert (cost(merged), cost(aliased)) == (2, 2)

    def test_variables_size_connections(self) -> None:
        query = "query ($n: Int) { assignedFulfillmentOrders(first: $n) { nodes { id } } }"
        assert cost(query, {"n": 20}) == 22
        assert cost(query, {"n": 250}) == 252

    def test_a_connection_without_a_size_is_costed_as_a_full_page(self) -> None:
        # refused by the limits; its cost still says how much it could have been
        assert cost("{ assignedFulfillmentOrders { nodes { id } } }") == 2 + 250

    def test_skip_and_include_remove_what_will_not_run(self) -> None:
        query = """query ($full: Boolean!) { fulfillmentOrder(id: "1") {
            id lineItems(first: 50) @include(if: $full) { nodes { id } }
            destination @skip(if: $full) { city } } }"""
        assert cost(query, {"full": True}) == 1 + (2 + 50)
        assert cost(query, {"full": False}) == 1 + 1

    def test_an_interface_costs_its_dearest_possible_type(self) -> None:
        # FulfillmentOrder: destination 1; merchant request: fulfillmentOrder 1 + lineItems (2 + 2) = 5
        query = """{ node(id: "1") { id
            ... on FulfillmentOrder { destination { city } }
            ... on FulfillmentOrderMerchantRequest { fulfillmentOrder { lineItems(first: 2) { nodes { id } } } } } }"""
        assert cost(query) == 1 + 5

    def test_nodes_is_sized_by_its_ids(self) -> None:
        query = '{ nodes(ids: ["1", "2", "3"]) { ... on FulfillmentOrder { destination { id } } } }'
        assert cost(query) == 3 * (1 + 1)
        variables = "query ($ids: [ID!]!) { nodes(ids: $ids) { id } }"
        assert cost(variables, {"ids": ["1"] * 40}) == 40

    def test_a_list_of_objects_costs_one_object(self) -> None:
        assert cost('{ fulfillmentOrder(id: "1") { supportedActions { action } } }') == 2

    def test_a_mutation_costs_ten_plus_its_selection(self) -> None:
        query = """mutation { fulfillmentOrderAcceptCancellationRequest(id: "1", message: "ok") {
            fulfillmentOrder { id status } userErrors { field message } } }"""
        assert cost(query) == 10 + 1 + 1
        bare = 'mutation { fulfillmentOrderAcceptCancellationRequest(id: "1") { userErrors { message } } }'
        assert cost(bare) == 11

    def test_the_named_operation_is_the_one_costed(self) -> None:
        query = """query Small { shop { name } }
            query Big { assignedFulfillmentOrders(first: 100) { nodes { id } } }"""
        assert (cost(query, operation="Small"), cost(query, operation="Big")) == (1, 102)
        assert cost(query, operation="Missing") == 0


class TestActualCost:
    QUERY = """{ assignedFulfillmentOrders(first: 10) {
        edges { node { id lineItems(first: 5) { edges { node { id } } } } } } }"""

    def test_a_connection_costs_the_edges_it_returned(self) -> None:
        data = {
            "assignedFulfillmentOrders": {
                "edges": [
                    {"node": {"id": "a", "lineItems": {"edges": [{"node": {"id": "1"}}]}}},
                    {
                        "node": {
                            "id": "b",
                            "lineItems": {"edges": [{"node": {"id": str(i)}} for i in range(3)]},
                        }
                    },
                ]
            }
        }
        # 2 + (1 + (2 + 1)) + (1 + (2 + 3)) = 12, down from the 82 requested
        assert actual(self.QUERY, data) == 12
        assert actual(self.QUERY, {"assignedFulfillmentOrders": {"edges": []}}) == 2

    def test_a_null_object_costs_nothing(self) -> None:
        assert (
            actual('{ fulfillmentOrder(id: "1") { destination { city } } }', {"fulfillmentOrder": None}) == 0
        )
        found = {"fulfillmentOrder": {"destination": None}}
        assert actual('{ fulfillmentOrder(id: "1") { destination { city } } }', found) == 1

    def test_a_mutation_costs_ten_even_when_it_returns_nothing(self) -> None:
        query = """mutation { fulfillmentOrderAcceptCancellationRequest(id: "1") {
            fulfillmentOrder { id } userErrors { field message } } }"""
        refused = {
            "fulfillmentOrderAcceptCancellationRequest": {"fulfillmentOrder": None, "userErrors": [{}]}
        }
        done = {
            "fulfillmentOrderAcceptCancellationRequest": {"fulfillmentOrder": {"id": "1"}, "userErrors": []}
        }
        assert actual(query, refused) == 10 + 1
        assert actual(query, done) == 10 + 1
        assert actual(query, {"fulfillmentOrderAcceptCancellationRequest": None}) == 10

    def test_aliases_are_read_from_the_data_by_their_keys(self) -> None:
        query = (
            '{ a: fulfillmentOrder(id: "1") { d: destination { city } } b: fulfillmentOrder(id: "2") { id } }'
        )
        assert actual(query, {"a": {"d": {"city": "x"}}, "b": None}) == 2

    def test_nodes_costs_the_objects_found(self) -> None:
        query = '{ nodes(ids: ["1", "2", "3"]) { ... on FulfillmentOrder { destination { id } } } }'
        assert actual(query, {"nodes": [None, {"destination": {"id": "d"}}, {"destination": None}]}) == 2 + 1

    def test_no_data_costs_nothing(self) -> None:
        assert actual_cost(schema(), parse("{ shop { name } }"), None, None, None) == 0

    def test_actual_never_exceeds_requested_for_a_full_answer(self) -> None:
        query = """{ assignedFulfillmentOrders(first: 2) { nodes { supportedActions { action }
            lineItems(first: 2) { nodes { id } } } } }"""
        item = {"supportedActions": [{"action": "A"}] * 5, "lineItems": {"nodes": [{"id": "1"}, {"id": "2"}]}}
        assert actual(query, {"assignedFulfillmentOrders": {"nodes": [item, item]}}) == cost(query)


class TestQueryLimits:
    def test_ordinary_queries_pass(self) -> None:
        assert codes(TestActualCost.QUERY) == []
        assert (
            codes("query ($n: Int!) { assignedFulfillmentOrders(last: $n) { nodes { id } } }", {"n": 250})
            == []
        )

    def test_the_standard_introspection_query_passes(self) -> None:
        full = get_introspection_query(
            descriptions=True,
            specified_by_url=True,
            directive_is_repeatable=True,
            input_value_deprecation=True,
        )
        assert codes(full) == []

    def test_a_connection_needs_first_or_last(self) -> None:
        assert codes("{ assignedFulfillmentOrders { nodes { id } } }") == ["MISSING_PAGE_SIZE"]
        document = parse("{ shop { assignedFulfillmentOrders(after: null) { nodes { id } } } }")
        (error,) = check_query_limits(schema(), document, None, None)
        assert error.message == "you must provide one of first or last"
        assert error.locations is not None

    def test_a_page_is_at_most_250(self) -> None:
        assert codes("{ assignedFulfillmentOrders(first: 251) { nodes { id } } }") == [
            "MAX_PAGE_SIZE_EXCEEDED"
        ]
        query = "query ($n: Int) { assignedFulfillmentOrders(first: 1) { nodes { lineItems(last: $n) { nodes { id } } } } }"
        assert codes(query, {"n": 1000}) == ["MAX_PAGE_SIZE_EXCEEDED"]
        assert codes(query, {"n": -1}) == ["INVALID_PAGE_SIZE"]

    def test_input_arrays_are_at_most_250_literal_or_variable(self) -> None:
        ids = ", ".join(f'"{i}"' for i in range(251))
        assert codes(f"{{ nodes(ids: [{ids}]) {{ id }} }}") == ["MAX_INPUT_SIZE_EXCEEDED"]
        query = (
            "query ($ids: [ID!]) { assignedFulfillmentOrders(first: 1, locationIds: $ids) { nodes { id } } }"
        )
        assert codes(query, {"ids": [str(i) for i in range(300)]}) == ["MAX_INPUT_SIZE_EXCEEDED"]
        assert codes(query, {"ids": [str(i) for i in range(250)]}) == []

    def test_depth_is_bounded(self) -> None:
        inner = "id"
        for _ in range(7):  # each level nests three fields: merchantRequests > nodes > fulfillmentOrder
            inner = f"merchantRequests(first: 1) {{ nodes {{ fulfillmentOrder {{ {inner} }} }} }}"
        document = parse(f'{{ fulfillmentOrder(id: "1") {{ {inner} }} }}')
        (error,) = check_query_limits(schema(), document, None, None)
        assert error.extensions is not None
        assert (error.extensions["code"], error.extensions["depth"]) == ("MAX_DEPTH_EXCEEDED", 23)

    def test_aliases_and_expanded_fragments_count_against_the_field_limit(self) -> None:
        fragment = "fragment F on FulfillmentOrder { " + " ".join(f"a{i}: id" for i in range(100)) + " }"
        spreads = " ".join(f'f{i}: fulfillmentOrder(id: "{i}") {{ ...F }}' for i in range(10))
        assert codes(f"{{ {spreads} }} {fragment}") == ["MAX_FIELDS_EXCEEDED"]  # 10 x 101 = 1,010
        fewer = " ".join(f'f{i}: fulfillmentOrder(id: "{i}") {{ ...F }}' for i in range(9))
        assert codes(f"{{ {fewer} }} {fragment}") == []

    def test_a_fragment_bomb_is_measured_without_expanding_it(self) -> None:
        # 40 fragments each spreading the previous one twice: 2^40 fields if expanded
        fragments = ["fragment F0 on FulfillmentOrder { id }"]
        for i in range(1, 41):
            fragments.append(
                f"fragment F{i} on FulfillmentOrder {{ a: destination {{ id }} ...F{i - 1} b: status ...F{i - 1} }}"
            )
        document = parse('{ fulfillmentOrder(id: "1") { ...F40 } } ' + " ".join(fragments))
        assert [
            e.extensions["code"] for e in check_query_limits(schema(), document, None, None) if e.extensions
        ] == ["MAX_FIELDS_EXCEEDED"]

    def test_lists_that_are_not_connections_nest_at_most_three_deep(self) -> None:
        # (graphql-core's own validation already stops `fields` inside `fields` three deep)
        bomb = "{ __schema { types { interfaces { fields { args { name } } } } } }"
        assert codes(bomb) == ["MAX_LIST_NESTING_EXCEEDED"]
        assert codes("{ __schema { types { fields { args { name } } } } }") == []

    def test_variables_of_the_wrong_type_are_reported_as_such(self) -> None:
        query = "query ($n: Int) { assignedFulfillmentOrders(first: $n) { nodes { id } } }"
        assert codes(query, {"n": "ten"}) == ["INVALID_VARIABLE"]

    @pytest.mark.parametrize("operation", ["query", "mutation"])
    def test_an_unknown_operation_name_is_left_to_execution(self, operation: str) -> None:
        document = parse(f"{operation} A {{ __typename }}")
        assert check_query_limits(schema(), document, "B", None) == []


class TestAnyQuery:
    """Whatever valid document the schema allows, the checks answer (no exception) and agree."""

    @given(query=queries(SDL.read_text()) | mutations(SDL.read_text()))
    @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    def test_limits_and_costs_always_answer(self, query: str) -> None:
        document = parse(query)
        assert validate(schema(), document) == []
        errors = check_query_limits(schema(), document, None, None)
        assert all(error.extensions and error.extensions.get("code") for error in errors)
        requested = requested_cost(schema(), document, None, None)
        assert requested >= 0
        assert actual_cost(schema(), document, None, None, {}) == 0


@pytest.mark.parametrize("version", VERSIONS)
def test_the_served_schemas_are_costed_by_the_same_rules(version: str) -> None:
    # The worked example's shape on each version's own schema (the assigned orders hang off `shop` before 2024-07)
    served = SCHEMAS[version]
    inner = "assignedFulfillmentOrders(first: 10) { edges { node { id lineItems(first: 5) { edges { node { id } } } } } }"
    text = f"{{ shop {{ {inner} }} }}" if version < "2024-07" else f"{{ {inner} }}"
    document = parse(text)
    assert validate(served, document) == []
    assert check_query_limits(served, document, None, None) == []
    expected = 82 + (1 if version < "2024-07" else 0)  # + the shop object
    assert requested_cost(served, document, None, None) == expected
    mutation = parse(
        'mutation { fulfillmentOrderAcceptCancellationRequest(id: "gid://shopify/FulfillmentOrder/1") '
        "{ fulfillmentOrder { id status requestStatus } userErrors { field message } } }"
    )
    assert requested_cost(served, mutation, None, None) == 12
