"""Load templates/lua/llmc.lua under LuaJIT (lupa) with a fake Envoy handle for unit tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lupa import luajit21

from compiler.translate.envoyfilter import lua_source

FAKE = Path(__file__).with_name("fake_envoy.lua").read_text()


@dataclass
class Reply:
    status: int | None
    headers: dict[str, str]
    body: str
    cleared: int
    metadata: dict[str, Any]
    logs: list[str]
    response_body: str | None


class LuaFilter:
    def __init__(self) -> None:
        self.lua = luajit21.LuaRuntime(unpack_returned_tuples=True)
        self.M = self.lua.execute(lua_source())
        self.fake = self.lua.execute(FAKE)
        self.envoy_on_request = self.lua.globals().envoy_on_request

    def table(self, value: Any) -> Any:
        if isinstance(value, dict):
            return self.lua.table_from({k: self.table(v) for k, v in value.items()})
        if isinstance(value, list):
            return self.lua.table_from([self.table(v) for v in value])
        return value

    def rewrite(self, body: str, fields: list[tuple[str, str]]) -> tuple[str | None, str | None]:
        result = self.M.rewrite(body, self.table([list(f) for f in fields]))
        if isinstance(result, tuple):
            return result[0], result[1]
        return result, None

    @staticmethod
    def _text(table: Any, key: str) -> str | bytes | None:
        """A string field of a Lua table; bytes where it is not UTF-8 (lupa decodes to str)."""
        try:
            return table[key]
        except UnicodeDecodeError as exc:
            return exc.object

    def request(self, context: dict | None, body: str | bytes | None, headers: dict[str, str] | None = None,
                method: str = "POST", path: str = "/", route: str | None = None) -> Reply:
        """Run envoy_on_request; ``route`` is the matched route's name (default: the context's first)."""
        if route is None and context is not None:
            route = next(iter(context["routes"]))
        hdrs = {":method": method, ":path": path, ":authority": "example", **(headers or {})}
        if body is not None and "content-length" not in hdrs:
            hdrs["content-length"] = str(len(body if isinstance(body, bytes) else body.encode()))
        pinned = {b["pin"]: True for rule in (context or {}).get("rules", {}).values()
                  for b in rule["backends"] if "pin" in b}
        h = self.fake.handle(self.table({"headers": hdrs, "body": body, "context": context,
                                         "route_name": route, "pinned": pinned,
                                         "pin_header": (context or {}).get("pin_header")}))
        self.envoy_on_request(h)
        resp = h.response
        headers_out = dict(h.headers_map.items())
        return Reply(
            status=int(resp.headers[":status"]) if resp is not None else None,
            headers=headers_out, body=self._text(h, "body_text"), cleared=h.cleared,
            metadata=dict(h.dynamic_metadata.items()), logs=list(h.logs.values()),
            response_body=resp.body if resp is not None else None)
