"""The rules as they are, under ``/v1/flags``: the flags, and one flag's variations with
their variables. Nothing here decides for a visitor."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from service.errors import json_response
from service.store import RulesStore

if TYPE_CHECKING:
    from service.shell import Shell

__all__ = ["Catalog"]


class Catalog:
    """The listing handlers."""

    def __init__(self, store: RulesStore) -> None:
        self.store = store

    def add_routes(self, router: Shell) -> None:
        router.add("GET", "/v1/flags", self.list_flags)
        router.add("GET", "/v1/flags/{flag}/variations", self.list_variations)

    async def list_flags(self, request: web.BaseRequest) -> web.Response:
        ruleset = self.store.served().ruleset
        return json_response({"revision": ruleset.revision, "flags": list(ruleset.flag_keys)})

    async def list_variations(self, request: web.BaseRequest, key: str) -> web.Response:
        ruleset = self.store.served().ruleset
        flag = ruleset.flag(key)
        variables = ruleset.variations(key)
        variations = {
            name: {
                "id": variation.id,
                "value": variation.value if variation.has_value else name != "off",
                "variables": variables[name],
            }
            for name, variation in flag.variations.items()
        }
        return json_response(
            {
                "flag": key,
                "revision": ruleset.revision,
                "default": flag.default,
                "variations": variations,
            }
        )
