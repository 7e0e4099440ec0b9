"""Query cost and query limits, as Shopify calculates them, read off the document before it runs.

Cost (Shopify's rules, https://shopify.dev/docs/api/usage/limits):

* a scalar or enum field costs 0, an object 1 plus what is selected inside it;
* an interface or union costs 1 plus the most expensive selection among its possible object types;
* a connection (a `...Connection` type with `pageInfo` and `edges`/`nodes`, paged by `first`/`last`) costs
  2 plus, per object it pages over, what is selected on each object: the requested cost counts
  `max(first, last)` objects, the actual cost the objects returned;
* a mutation field costs 10 plus what its payload selects;
* a list of objects that is not a connection costs like one object, unless an argument of the field is a
  list (`nodes(ids:)`), whose length then counts the objects;
* fields are merged by response key and `@skip`/`@include`, fragments, inline fragments and variables are
  honoured exactly as execution does, so only what will run is counted.

Open points (Shopify does not publish them) decided here: the edges and the `nodes` list of a connection
count their objects separately when both are selected; `pageInfo` and `cursor` are covered by the
connection's 2; a mutation costs 10 even when it returns null; introspection fields follow the same rules
(the structural limits below bound them); the actual cost of a list that is not sized by an argument is
1 plus its most expensive item, so it never exceeds the requested cost.

Limits (`check_query_limits`), each refused before anything runs with `extensions.code`:

* `MAX_DEPTH_EXCEEDED` - fields nested deeper than `graphql_max_depth` (fragments expanded);
* `MAX_FIELDS_EXCEEDED` - more than `graphql_max_fields` field selections once fragments are expanded
  (every alias counts);
* `MAX_LIST_NESTING_EXCEEDED` - lists that are neither connections nor sized by an argument nested more
  than `MAX_NESTED_LISTS` deep (their length is not the caller's to choose, only the schema's or data's);
* `MISSING_PAGE_SIZE` - a connection with neither `first` nor `last` (Shopify's message);
* `MAX_PAGE_SIZE_EXCEEDED` / `INVALID_PAGE_SIZE` - `first`/`last` above 250 or below 0;
* `MAX_INPUT_SIZE_EXCEEDED` - an input array (literal or variable, at any depth) over 250 items;
* `INVALID_VARIABLE` - variables that cannot be coerced to their declared types (execution would refuse
  them too; they are reported here so a bad `first` is not mistaken for a missing one).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final, cast

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLField,
    GraphQLIncludeDirective,
    GraphQLObjectType,
    GraphQLSchema,
    GraphQLSkipDirective,
    InlineFragmentNode,
    Node,
    OperationDefinitionNode,
    OperationType,
    SchemaMetaFieldDef,
    SelectionSetNode,
    TypeMetaFieldDef,
    get_named_type,
    get_nullable_type,
    get_operation_ast,
    is_abstract_type,
    is_leaf_type,
    is_list_type,
    is_object_type,
    type_from_ast,
)
from graphql.execution.values import (
    VariableValues,
    get_argument_values,
    get_directive_values,
    get_variable_values,
)

from cancelflow.config import get_settings

MUTATION_COST: Final = 10
OBJECT_COST: Final = 1
CONNECTION_COST: Final = 2
MAX_PAGE_SIZE: Final = 250
MAX_INPUT_SIZE: Final = 250
MAX_NESTED_LISTS: Final = 3
MAX_ERRORS: Final = 20  # one bad query gets at most this many limit errors back
# Documents are parsed with `parse(source, max_tokens=MAX_TOKENS)`, so that parsing and validation, which run
# before these limits, are bounded too (the full introspection query is under 1,000 tokens).
MAX_TOKENS: Final = 10_000


# --- the document as execution sees it ----------------------------------------------------------------------


class _Document:
    """Fields of a selection set for one runtime type, with the variables applied (execution's
    CollectFields: `@skip`/`@include`, fragment type conditions, merging by response key)."""

    def __init__(
        self,
        schema: GraphQLSchema,
        document: DocumentNode,
        operation: OperationDefinitionNode,
        variables: VariableValues | None,
    ) -> None:
        self.schema = schema
        self.operation = operation
        self.variables = variables
        self.fragments = {
            d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
        }
        self._collected: dict[tuple[object, ...], dict[str, list[FieldNode]]] = {}
        self._arguments: dict[tuple[int, int], dict[str, Any]] = {}

    def root_type(self) -> GraphQLObjectType | None:
        kind = self.operation.operation
        if kind == OperationType.MUTATION:
            return self.schema.mutation_type
        if kind == OperationType.SUBSCRIPTION:
            return self.schema.subscription_type
        return self.schema.query_type

    def fields(
        self, runtime_type: GraphQLObjectType, selection_sets: list[SelectionSetNode]
    ) -> dict[str, list[FieldNode]]:
        # Collected once per type and selection (every item of a list walks the same ones).
        key = (runtime_type.name, *map(id, selection_sets))
        grouped = self._collected.get(key)
        if grouped is None:
            grouped = defaultdict(list)
            visited: set[str] = set()
            for selection_set in selection_sets:
                self._collect(runtime_type, selection_set, grouped, visited)
            self._collected[key] = grouped
        return grouped

    def _collect(
        self,
        runtime_type: GraphQLObjectType,
        selection_set: SelectionSetNode,
        grouped: dict[str, list[FieldNode]],
        visited: set[str],
    ) -> None:
        for selection in selection_set.selections:
            if not self._included(selection):
                continue
            if isinstance(selection, FieldNode):
                key = selection.alias.value if selection.alias else selection.name.value
                grouped[key].append(selection)
            elif isinstance(selection, InlineFragmentNode):
                if self._matches(selection.type_condition, runtime_type):
                    self._collect(runtime_type, selection.selection_set, grouped, visited)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                fragment = self.fragments.get(name)
                if name in visited or fragment is None:
                    continue
                visited.add(name)
                if self._matches(fragment.type_condition, runtime_type):
                    self._collect(runtime_type, fragment.selection_set, grouped, visited)

    def _included(self, node: Node) -> bool:
        try:
            skip = get_directive_values(GraphQLSkipDirective, node, self.variables)  # type: ignore[arg-type]
            if skip is not None and skip.get("if") is True:
                return False
            include = get_directive_values(GraphQLIncludeDirective, node, self.variables)  # type: ignore[arg-type]
        except GraphQLError:
            return True  # a directive argument execution will refuse: count it, the larger cost
        return not (include is not None and include.get("if") is False)

    def _matches(self, condition: Any, runtime_type: GraphQLObjectType) -> bool:
        if condition is None:
            return True
        conditional = type_from_ast(self.schema, condition)
        if conditional is runtime_type:
            return True
        return is_abstract_type(conditional) and self.schema.is_sub_type(conditional, runtime_type)

    def field_def(self, parent: GraphQLObjectType, name: str) -> GraphQLField | None:
        if name == "__typename":
            return None  # a scalar: costs nothing
        if parent is self.schema.query_type and name == "__schema":
            return SchemaMetaFieldDef
        if parent is self.schema.query_type and name == "__type":
            return TypeMetaFieldDef
        return cast(GraphQLField | None, parent.fields.get(name))

    def arguments(self, field: GraphQLField, node: FieldNode) -> dict[str, Any]:
        """The field's arguments by their schema names, or {} when execution would refuse them."""
        key = (id(field), id(node))
        arguments = self._arguments.get(key)
        if arguments is None:
            try:
                values = get_argument_values(field, node, self.variables)
            except GraphQLError:
                values = {}
            by_out_name = {(arg.out_name or name): name for name, arg in field.args.items()}
            arguments = {by_out_name.get(k, k): value for k, value in values.items()}
            self._arguments[key] = arguments
        return arguments

    def object_types(self, named: Any) -> list[GraphQLObjectType]:
        """The object types a value of `named` may be at run time."""
        if is_object_type(named):
            return [named]
        if is_abstract_type(named):
            return list(self.schema.get_possible_types(named))
        return []


def _subselections(nodes: Iterable[FieldNode]) -> list[SelectionSetNode]:
    return [node.selection_set for node in nodes if node.selection_set is not None]


def connection_type(field: GraphQLField) -> GraphQLObjectType | None:
    """The connection type `field` pages over, or None when it is not a connection."""
    named = get_named_type(field.type)
    if (
        isinstance(named, GraphQLObjectType)
        and named.name.endswith("Connection")
        and "pageInfo" in named.fields
        and ("edges" in named.fields or "nodes" in named.fields)
        and ("first" in field.args or "last" in field.args)
    ):
        return named
    return None


def is_connection(field: GraphQLField) -> bool:
    return connection_type(field) is not None


def _page_size(arguments: Mapping[str, Any]) -> int:
    sizes = [value for value in (arguments.get("first"), arguments.get("last")) if isinstance(value, int)]
    return max(0, max(sizes)) if sizes else MAX_PAGE_SIZE


def _list_length(arguments: Mapping[str, Any]) -> int | None:
    lengths = [len(value) for value in arguments.values() if isinstance(value, list)]
    return max(lengths) if lengths else None


def _prepare(
    schema: GraphQLSchema,
    document: DocumentNode,
    operation_name: str | None,
    variables: Mapping[str, Any] | None,
) -> tuple[_Document, list[GraphQLError]] | None:
    operation = get_operation_ast(document, operation_name)
    if operation is None:
        return None  # no such operation: execution says so
    coerced = get_variable_values(schema, operation.variable_definitions or (), dict(variables or {}))
    if isinstance(coerced, list):
        return _Document(schema, document, operation, None), coerced
    return _Document(schema, document, operation, coerced), []


def _costed(
    schema: GraphQLSchema,
    document: DocumentNode,
    operation_name: str | None,
    variables: Mapping[str, Any] | None,
) -> tuple[_Document, GraphQLObjectType, bool] | None:
    """The prepared document, its operation's root type and whether it is a mutation, or None when there
    is nothing to cost (no such operation, no root type): the requested and the actual cost walk the same."""
    prepared = _prepare(schema, document, operation_name, variables)
    if prepared is None:
        return None
    doc = prepared[0]
    root = doc.root_type()
    if root is None:
        return None
    return doc, root, doc.operation.operation == OperationType.MUTATION


# --- requested cost -------------------------------------------------------------------------------------------


class _Requested:
    def __init__(self, doc: _Document) -> None:
        self.doc = doc

    def selection(
        self, parent: GraphQLObjectType, subs: list[SelectionSetNode], *, mutation: bool = False
    ) -> int:
        total = 0
        for nodes in self.doc.fields(parent, subs).values():
            field = self.doc.field_def(parent, nodes[0].name.value)
            if field is not None:
                total += self.field(field, nodes, mutation=mutation)
        return total

    def children(self, named: Any, subs: list[SelectionSetNode]) -> int:
        return max((self.selection(t, subs) for t in self.doc.object_types(named)), default=0)

    def field(self, field: GraphQLField, nodes: list[FieldNode], *, mutation: bool = False) -> int:
        named = get_named_type(field.type)
        base = MUTATION_COST if mutation else OBJECT_COST
        if is_leaf_type(named):
            return MUTATION_COST if mutation else 0
        subs = _subselections(nodes)
        arguments = self.doc.arguments(field, nodes[0])
        connection = connection_type(field)
        if connection is not None:
            per_item, other = self.connection(connection, subs)
            return CONNECTION_COST + _page_size(arguments) * per_item + other + (base - OBJECT_COST)
        one = base + self.children(named, subs)
        if is_list_type(get_nullable_type(field.type)):
            length = _list_length(arguments)
            if length is not None:
                return length * one
        return one

    def connection(self, connection: GraphQLObjectType, subs: list[SelectionSetNode]) -> tuple[int, int]:
        """(cost of one paged object, cost of the rest of the selection)."""
        per_item = other = 0
        for nodes in self.doc.fields(connection, subs).values():
            name = nodes[0].name.value
            field = self.doc.field_def(connection, name)
            if field is None or name == "pageInfo":
                continue
            if name == "nodes":
                per_item += OBJECT_COST + self.children(get_named_type(field.type), _subselections(nodes))
            elif name == "edges":
                edge = get_named_type(field.type)
                assert isinstance(edge, GraphQLObjectType)
                for edge_nodes in self.doc.fields(edge, _subselections(nodes)).values():
                    edge_field = self.doc.field_def(edge, edge_nodes[0].name.value)
                    if edge_field is None:
                        continue
                    if edge_nodes[0].name.value == "node":
                        per_item += OBJECT_COST + self.children(
                            get_named_type(edge_field.type), _subselections(edge_nodes)
                        )
                    else:
                        per_item += self.field(edge_field, edge_nodes)
            else:
                other += self.field(field, nodes)
        return per_item, other


def requested_cost(
    schema: GraphQLSchema,
    document: DocumentNode,
    operation_name: str | None,
    variables: Mapping[str, Any] | None,
) -> int:
    """What the operation may cost at most, before it runs (Shopify's `requestedQueryCost`)."""
    costed = _costed(schema, document, operation_name, variables)
    if costed is None:
        return 0
    doc, root, mutation = costed
    return _Requested(doc).selection(root, [doc.operation.selection_set], mutation=mutation)


# --- actual cost ----------------------------------------------------------------------------------------------


class _Actual:
    def __init__(self, doc: _Document) -> None:
        self.doc = doc

    def selection(
        self,
        parent: GraphQLObjectType,
        subs: list[SelectionSetNode],
        data: Mapping[str, Any],
        *,
        mutation: bool = False,
    ) -> int:
        total = 0
        for key, nodes in self.doc.fields(parent, subs).items():
            field = self.doc.field_def(parent, nodes[0].name.value)
            if field is not None and key in data:
                total += self.field(field, nodes, data[key], mutation=mutation)
        return total

    def children(self, named: Any, subs: list[SelectionSetNode], value: Any) -> int:
        if not isinstance(value, Mapping):
            return 0
        types = self.doc.object_types(named)
        typename = value.get("__typename")
        if isinstance(typename, str):
            types = [t for t in types if t.name == typename] or types
        return max((self.selection(t, subs, value) for t in types), default=0)

    def field(
        self, field: GraphQLField, nodes: list[FieldNode], value: Any, *, mutation: bool = False
    ) -> int:
        named = get_named_type(field.type)
        base = MUTATION_COST if mutation else OBJECT_COST
        if is_leaf_type(named) or value is None:
            return MUTATION_COST if mutation else 0
        subs = _subselections(nodes)
        connection = connection_type(field)
        if connection is not None:
            if not isinstance(value, Mapping):
                return base - OBJECT_COST
            return CONNECTION_COST + self.connection(connection, subs, value) + (base - OBJECT_COST)
        if not is_list_type(get_nullable_type(field.type)):
            return base + self.children(named, subs, value)
        items = [item for item in _flatten(value) if item is not None]
        if _list_length(self.doc.arguments(field, nodes[0])) is not None:
            return sum(base + self.children(named, subs, item) for item in items)
        if not items:
            return MUTATION_COST if mutation else 0
        return base + max(self.children(named, subs, item) for item in items)

    def connection(
        self, connection: GraphQLObjectType, subs: list[SelectionSetNode], value: Mapping[str, Any]
    ) -> int:
        total = 0
        for key, nodes in self.doc.fields(connection, subs).items():
            name = nodes[0].name.value
            field = self.doc.field_def(connection, name)
            if field is None or name == "pageInfo" or key not in value:
                continue
            inner = value[key]
            if name == "nodes":
                named = get_named_type(field.type)
                for item in _flatten(inner):
                    if item is not None:
                        total += OBJECT_COST + self.children(named, _subselections(nodes), item)
            elif name == "edges":
                edge = get_named_type(field.type)
                assert isinstance(edge, GraphQLObjectType)
                edge_fields = self.doc.fields(edge, _subselections(nodes))
                for item in _flatten(inner):
                    if not isinstance(item, Mapping):
                        continue
                    for edge_key, edge_nodes in edge_fields.items():
                        edge_field = self.doc.field_def(edge, edge_nodes[0].name.value)
                        if edge_field is None or item.get(edge_key) is None:
                            continue
                        if edge_nodes[0].name.value == "node":
                            total += OBJECT_COST + self.children(
                                get_named_type(edge_field.type), _subselections(edge_nodes), item[edge_key]
                            )
                        else:
                            total += self.field(edge_field, edge_nodes, item[edge_key])
            else:
                total += self.field(field, nodes, inner)
        return total


def _flatten(value: Any) -> Iterator[Any]:
    if isinstance(value, list):
        for item in value:
            yield from _flatten(item)
    else:
        yield value


def actual_cost(
    schema: GraphQLSchema,
    document: DocumentNode,
    operation_name: str | None,
    variables: Mapping[str, Any] | None,
    data: Mapping[str, Any] | None,
) -> int:
    """What the operation cost once it ran, from the data it returned (`actualQueryCost`)."""
    if data is None:
        return 0
    costed = _costed(schema, document, operation_name, variables)
    if costed is None:
        return 0
    doc, root, mutation = costed
    return _Actual(doc).selection(root, [doc.operation.selection_set], data, mutation=mutation)


# --- limits ----------------------------------------------------------------------------------------------------


def _error(message: str, code: str, nodes: Node | list[Node] | None = None, **extra: Any) -> GraphQLError:
    return GraphQLError(message, nodes, extensions={"code": code, **extra})


class _Shape:
    """Depth and field count of the operation with every fragment expanded (skip/include and type
    conditions ignored: the bound holds whatever the variables), each fragment measured once."""

    def __init__(self, fragments: Mapping[str, FragmentDefinitionNode]) -> None:
        self.fragments = fragments
        self.memo: dict[str, tuple[int, int]] = {}

    def measure(
        self, selection_set: SelectionSetNode, stack: frozenset[str] = frozenset()
    ) -> tuple[int, int]:
        depth = count = 0
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                inner_depth, inner_count = (
                    self.measure(selection.selection_set, stack) if selection.selection_set else (0, 0)
                )
                depth, count = max(depth, 1 + inner_depth), count + 1 + inner_count
            elif isinstance(selection, InlineFragmentNode):
                inner_depth, inner_count = self.measure(selection.selection_set, stack)
                depth, count = max(depth, inner_depth), count + inner_count
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                fragment = self.fragments.get(name)
                if fragment is None or name in stack:
                    continue  # unknown or cyclic: validation refuses it
                if name not in self.memo:
                    self.memo[name] = self.measure(fragment.selection_set, stack | {name})
                inner_depth, inner_count = self.memo[name]
                depth, count = max(depth, inner_depth), count + inner_count
        return depth, count


class _Limits:
    def __init__(self, doc: _Document) -> None:
        self.doc = doc
        self.errors: dict[tuple[str, int], GraphQLError] = {}

    def add(self, key_node: Node, error: GraphQLError) -> None:
        code = str((error.extensions or {}).get("code"))
        self.errors.setdefault((code, id(key_node)), error)

    def selection(self, parent: GraphQLObjectType, subs: list[SelectionSetNode], lists: int) -> None:
        for nodes in self.doc.fields(parent, subs).values():
            if len(self.errors) >= MAX_ERRORS:
                return
            field = self.doc.field_def(parent, nodes[0].name.value)
            if field is not None:
                self.field(field, nodes, lists)

    def field(self, field: GraphQLField, nodes: list[FieldNode], lists: int) -> None:
        node = nodes[0]
        arguments = self.doc.arguments(field, node)
        for arg, value in arguments.items():
            self.input_sizes(node, arg, value)
        named = get_named_type(field.type)
        if is_connection(field):
            self.page_size(node, arguments)
        elif (
            is_list_type(get_nullable_type(field.type))
            and not is_leaf_type(named)
            and _list_length(arguments) is None
        ):
            lists += 1
            if lists > MAX_NESTED_LISTS:
                message = (
                    f"Field '{node.name.value}' nests {lists} lists, which exceeds the maximum of "
                    f"{MAX_NESTED_LISTS} lists that are not paged connections."
                )
                self.add(node, _error(message, "MAX_LIST_NESTING_EXCEEDED", node))
                return
        subs = _subselections(nodes)
        if subs:
            for object_type in self.doc.object_types(named):
                self.selection(object_type, subs, lists)

    def page_size(self, node: FieldNode, arguments: Mapping[str, Any]) -> None:
        name = node.name.value
        given = {arg: arguments.get(arg) for arg in ("first", "last") if arguments.get(arg) is not None}
        if not given:
            self.add(
                node, _error("you must provide one of first or last", "MISSING_PAGE_SIZE", node, field=name)
            )
        for arg, value in given.items():
            if isinstance(value, int) and value > MAX_PAGE_SIZE:
                self.add(
                    node,
                    _error(
                        f"Argument '{arg}' on field '{name}' is {value}, which exceeds the maximum page "
                        f"size of {MAX_PAGE_SIZE}.",
                        "MAX_PAGE_SIZE_EXCEEDED",
                        node,
                        maxPageSize=MAX_PAGE_SIZE,
                    ),
                )
            elif isinstance(value, int) and value < 0:
                self.add(
                    node,
                    _error(
                        f"Argument '{arg}' on field '{name}' must not be negative.", "INVALID_PAGE_SIZE", node
                    ),
                )

    def input_sizes(self, node: FieldNode, arg: str, value: Any) -> None:
        for size in _array_sizes(value):
            if size > MAX_INPUT_SIZE:
                self.add(
                    node,
                    _error(
                        f"The input array size of {size} is greater than the maximum allowed of "
                        f"{MAX_INPUT_SIZE} (argument '{arg}' on field '{node.name.value}').",
                        "MAX_INPUT_SIZE_EXCEEDED",
                        node,
                        maxInputSize=MAX_INPUT_SIZE,
                    ),
                )
                return


def _array_sizes(value: Any) -> Iterator[int]:
    if isinstance(value, list):
        yield len(value)
        for item in value:
            yield from _array_sizes(item)
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _array_sizes(item)


def check_query_limits(
    schema: GraphQLSchema,
    document: DocumentNode,
    operation_name: str | None,
    variables: Mapping[str, Any] | None,
) -> list[GraphQLError]:
    """Why this operation must not run (empty: it may). Call after validation, before the cost."""
    prepared = _prepare(schema, document, operation_name, variables)
    if prepared is None:
        return []
    doc, variable_errors = prepared
    if variable_errors:
        for error in variable_errors:
            error.extensions = {**(error.extensions or {}), "code": "INVALID_VARIABLE"}
        return variable_errors[:MAX_ERRORS]
    settings = get_settings()
    operation = doc.operation
    depth, count = _Shape(doc.fragments).measure(operation.selection_set)
    errors: list[GraphQLError] = []
    if depth > settings.graphql_max_depth:
        errors.append(
            _error(
                f"Query has depth of {depth}, which exceeds max depth of {settings.graphql_max_depth}",
                "MAX_DEPTH_EXCEEDED",
                operation,
                depth=depth,
                maxDepth=settings.graphql_max_depth,
            )
        )
    if count > settings.graphql_max_fields:
        errors.append(
            _error(
                f"Query has {count} fields, which exceeds the maximum of {settings.graphql_max_fields} "
                "fields (fragments expanded, aliases included)",
                "MAX_FIELDS_EXCEEDED",
                operation,
                fields=count,
                maxFields=settings.graphql_max_fields,
            )
        )
    if errors:
        return errors  # not walked further: its size is the problem
    root = doc.root_type()
    if root is None:
        return []
    limits = _Limits(doc)
    limits.selection(root, [operation.selection_set], 0)
    return list(limits.errors.values())[:MAX_ERRORS]


__all__ = ["actual_cost", "check_query_limits", "is_connection", "requested_cost"]
