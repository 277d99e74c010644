"""Load the Lua filter (every module of templates/lua/llmc/, bundled as a filter gets it) under LuaJIT
(lupa) with the emulated Envoy handle (templates/lua/envoy_handle.lua, which `llmc explain` uses too)
for unit tests; :func:`load_modules` loads some modules alone."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

from lupa import luajit21

from compiler.translate.envoyfilter import lua_source

HANDLE = resources.files("llmc_templates.lua").joinpath("envoy_handle.lua").read_text(encoding="utf-8")
# Route selection for unit tests: the pinned route the routing header names, else the first route;
# every route's metadata names the route (as llmc's HTTP_ROUTE patches do).
SELECT = """
return function(pinned, pin_header, first)
  return function(headers)
    local pin = pin_header and headers[pin_header]
    if pin and pinned[pin] then return pin end
    return first
  end
end
"""
ROUTE_METADATA = "return setmetatable({}, {__index = function(_, k) return {route = k} end})"


#: Reading a global nobody defined raises (a misspelt or not-yet-declared local in a module reads
#: one; plain Lua would give nil and fail somewhere else, or not at all).
STRICT = """
local known = {}
for k in pairs(_G) do known[k] = true end
setmetatable(_G, { __index = function(_, k)
  if not known[k] then error("llmc: read of undefined global " .. tostring(k), 2) end
end })
"""


def strict_runtime() -> Any:
    lua = luajit21.LuaRuntime(unpack_returned_tuples=True)
    lua.execute(STRICT)
    return lua


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
        self.lua = strict_runtime()
        self.M = self.lua.execute(lua_source())
        self.handle = self.lua.execute(HANDLE)
        self.select = self.lua.execute(SELECT)
        self.envoy_on_request = self.lua.globals().envoy_on_request

    def module(self, name: str) -> Any:
        """The loaded module ``llmc.<name>`` of this filter (e.g. a translator)."""
        return self.lua.globals().require(f"llmc.{name}")

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
                method: str = "POST", path: str = "/", route: str | None = None,
                metadata: dict | None = None) -> Reply:
        """Run envoy_on_request; ``route`` is the matched route's name (default: the context's first);
        ``metadata``: the stream's dynamic metadata before the filter runs (``"ns:key": value``), as an
        upstream filter finds what the downstream one set."""
        if route is None and context is not None:
            route = next(iter(context["routes"]))
        hdrs = {":method": method, ":path": path, ":authority": "example", **(headers or {})}
        if body is not None and "content-length" not in hdrs:
            hdrs["content-length"] = str(len(body if isinstance(body, bytes) else body.encode()))
        pinned = {b["pin"]: True for rule in (context or {}).get("rules", {}).values()
                  for b in rule["backends"] if "pin" in b}
        req = self.table({"headers": hdrs, "body": body, "context": context, "route_name": route})
        req.select = self.select(self.table(pinned), (context or {}).get("pin_header"), route)
        req.route_metadata = self.lua.execute(ROUTE_METADATA)
        h = self.handle.new(req)
        for k, v in (metadata or {}).items():
            h.dynamic_metadata[k] = v
        self.envoy_on_request(h)
        resp = h.response
        headers_out = dict(h.headers_map.items())
        return Reply(
            status=int(resp.headers[":status"]) if resp is not None else None,
            headers=headers_out, body=self._text(h, "body_text"), cleared=h.cleared,
            metadata=dict(h.dynamic_metadata.items()), logs=list(h.logs.values()),
            response_body=resp.body if resp is not None else None)


def load_modules(*names: str, runtime: Any = None) -> tuple[Any, Any]:
    """A LuaJIT with only ``names`` and what they require bundled (compiler/luabundle.py) and loaded:
    (runtime, {name: module table}). Nothing else is in the runtime: a module that needs another it
    does not require fails here."""
    from compiler.luabundle import bundle_modules, closure, module_source

    lua = runtime or strict_runtime()
    sources = {n: module_source(n) for n in closure(names)}
    text = bundle_modules(sources).replace('return require("llmc.main")\n', "")
    lua.execute(text)
    loaded = {n: lua.eval(f'require("llmc.{n}")') for n in names}
    return lua, loaded


class Translator:
    """One translator module (``templates/lua/llmc/<name>.lua``) alone under LuaJIT (:func:`load_modules`):
    ``call(fn, *args)`` calls its function ``fn`` with dicts turned into Lua tables (None members left out)."""

    def __init__(self, name: str) -> None:
        self.lua, loaded = load_modules(name)
        self.module = loaded[name]

    def table(self, value: Any) -> Any:
        if isinstance(value, dict):
            return self.lua.table_from({k: self.table(v) for k, v in value.items() if v is not None})
        if isinstance(value, list):
            return self.lua.table_from([self.table(v) for v in value])
        return value

    def call(self, fn: str, *args: Any) -> Any:
        return self.module[fn](*(self.table(a) for a in args))


def load_translator(name: str) -> Translator:
    return Translator(name)
