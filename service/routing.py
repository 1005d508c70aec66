"""flagpost's own routing: a path is found by dictionary lookups on its shape, not by trying
a list of regular expressions.

aiohttp's application router tries each dynamic resource's pattern in turn; with the app layer
around it that cost about a third of a bare handler's time per request. Here a template such
as ``/v1/flags/{flag}/decision`` is filed under its number of segments and the positions of
its variables (its *shape*); a path is split on ``/`` once, and for each shape of that length
(one or two) the path's fixed segments are one dictionary key. Static paths are one lookup of
the whole path.

Matching follows aiohttp's router: a variable is one non-empty segment; the path is matched
percent-decoded except ``%2F`` and ``%25`` (``yarl.URL.path_safe``), which are decoded in the
variable's value only, so ``/v1/flags/a%2Fb/decision`` names the flag ``a/b``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from aiohttp import web

__all__ = ["FOUND_PATHS", "Handler", "Resource", "Router", "Target"]

#: Resolved paths kept for the next request that asks for one of them.
FOUND_PATHS = 4096
#: A route's handler: the request, then the path's variables in the template's order.
Handler = Callable[..., Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Target:
    """What a method of a path runs: its handler, the route's label (its template, as metrics
    name it), and whether it needs an API key."""

    handler: Handler
    label: str
    needs_key: bool


@dataclass(frozen=True, slots=True)
class Resource:
    """A path template's methods (``Allow`` lists their names)."""

    template: str
    methods: dict[str, Target]


class _Shape:
    """The templates of one length with their variables at the same positions."""

    __slots__ = ("fixed", "get_fixed", "get_variables", "one_variable", "resources")

    def __init__(self, fixed: tuple[int, ...], variables: tuple[int, ...]) -> None:
        self.fixed = fixed
        # The leading empty segment is always fixed, so there are two or more fixed positions
        # and itemgetter returns a tuple; of a single position it returns the item itself.
        self.one_variable = len(variables) == 1
        self.get_fixed = itemgetter(*fixed)
        self.get_variables = itemgetter(*variables)
        self.resources: dict[tuple[str, ...], Resource] = {}


class Router:
    """Templates to handlers; ``resolve`` finds a path's resource and variables."""

    def __init__(self) -> None:
        self._static: dict[str, Resource] = {}
        self._shapes: dict[int, list[_Shape]] = {}
        self._resources: list[Resource] = []
        # Paths found lately: the same few (a flag's decision) are asked again and again.
        # Emptied when full, so paths that never repeat (visitor codes) cost little.
        self._found: dict[str, tuple[Resource, tuple[str, ...]]] = {}

    def add(self, method: str, template: str, handler: Handler, *, needs_key: bool) -> None:
        resource = self._resource(template)
        if method in resource.methods:
            raise ValueError(f"{method} {template} is routed twice")
        resource.methods[method] = Target(handler, template, needs_key)

    def resolve(self, path: str) -> tuple[Resource, tuple[str, ...]] | None:
        """The resource a path (``URL.path_safe``) names and its variables, or None."""
        found = self._found.get(path)
        if found is None:
            found = self._resolve(path)
            if found is not None:
                if len(self._found) >= FOUND_PATHS:
                    self._found.clear()
                self._found[path] = found
        return found

    def _resolve(self, path: str) -> tuple[Resource, tuple[str, ...]] | None:
        resource = self._static.get(path)
        if resource is not None:
            return resource, ()
        segments = path.split("/")
        for shape in self._shapes.get(len(segments), ()):
            resource = shape.resources.get(shape.get_fixed(segments))
            if resource is None:
                continue
            picked = shape.get_variables(segments)
            values: tuple[str, ...] = (picked,) if shape.one_variable else picked
            if not all(values):  # a variable is never an empty segment
                return None
            if "%" in path:
                values = tuple(map(_decoded, values))
            return resource, values
        return None

    def resources(self) -> Iterator[Resource]:
        """Every resource, in the order their templates were first added."""
        return iter(self._resources)

    def _resource(self, template: str) -> Resource:
        segments = template.split("/")
        if segments[0] != "" or "" in segments[1:]:
            raise ValueError(f"not an absolute path template: {template!r}")
        variables = tuple(i for i, s in enumerate(segments) if s.startswith("{"))
        table: dict[Any, Resource]
        if not variables:
            table = self._static
            key: Any = template
        else:
            fixed = tuple(i for i in range(len(segments)) if i not in variables)
            shapes = self._shapes.setdefault(len(segments), [])
            shape = next((s for s in shapes if s.fixed == fixed), None)
            if shape is None:
                shape = _Shape(fixed, variables)
                shapes.append(shape)
                shapes.sort(key=lambda s: -len(s.fixed))  # the most specific shape first
            table = shape.resources
            key = tuple(segments[i] for i in fixed)
        found: Resource | None = table.get(key)
        if found is None:
            found = table[key] = Resource(template, {})
            self._resources.append(found)
        return found


def _decoded(value: str) -> str:
    if "%" not in value:
        return value
    return value.replace("%2F", "/").replace("%2f", "/").replace("%25", "%")
