-- An Envoy Lua stream handle, emulated, for running templates/lua/llmc.lua outside Envoy: by
-- `llmc explain` (compiler/explain.py) and by the Lua unit tests (tests/support/lua.py).
--
-- It provides what llmc.lua uses, with Envoy's semantics where they matter:
-- * headers(), body() (getBytes/setBytes/length; setBytes fixes content-length), respond(),
--   filterContext() (ctx:get), metadata() (route metadata: ctx:get), streamInfo()
--   (routeName(), dynamicMetadata():set/get), clearRouteCache(), timestamp(), logErr();
-- * wrappers from headers() and streamInfo() are out of scope after body() (Envoy raises
--   "object used outside of proper scope");
-- * route selection: the route matched when the request started stays cached; after
--   clearRouteCache() the next metadata() call selects again, through `req.select(headers)` (the
--   caller's VirtualService matching), with the headers as they are then; streamInfo():routeName()
--   keeps naming the first route; metadata() returns the wrapper it built first until the next
--   body() (Envoy memoizes it between yields).
-- respond() records the reply; in Envoy it also ends the script, which llmc.lua never relies on.
local Handle = {}

local function scoped(h, methods)
  local gen = h.generation
  local wrapper = {}
  for name, fn in pairs(methods) do
    wrapper[name] = function(...)
      if h.generation ~= gen then error("object used outside of proper scope") end
      return fn(...)
    end
  end
  return wrapper
end

-- req: {headers = {name = value}, body = string|nil, context = table|nil, route_name = string,
--       route_metadata = {route name = {key = value}}, select = function(headers) -> route name}
function Handle.new(req)
  local h = { headers_map = req.headers, body_text = req.body, context = req.context,
              route_name = req.route_name, current_route = req.route_name, select = req.select,
              route_metadata = req.route_metadata or {}, generation = 0, route_cached = true,
              cleared = 0, dynamic_metadata = {}, logs = {}, response = nil, reselections = 0 }
  local hm = h.headers_map
  local header_methods = {
    get = function(_, k) return hm[k] end,
    replace = function(_, k, v) hm[k] = v end,
    add = function(_, k, v) hm[k] = v end,
    remove = function(_, k) hm[k] = nil end,
  }
  function h:headers() return scoped(self, header_methods) end
  function h:body()
    self.generation = self.generation + 1
    self.metadata_wrapper = nil
    if self.body_text == nil then return nil end
    local handle = self
    return {
      length = function(_) return #handle.body_text end,
      getBytes = function(_, i, n) return handle.body_text:sub(i + 1, i + n) end,
      setBytes = function(_, s) handle.body_text = s; hm["content-length"] = tostring(#s) end,
    }
  end
  function h:respond(hdrs, body) self.response = { headers = hdrs, body = body } end
  -- Envoy's clock in milliseconds since the epoch; a fixed one here (req.now_ms), so output is deterministic
  function h:timestamp() return req.now_ms or 0 end
  function h:filterContext()
    if self.context == nil then return nil end
    local ctx = self.context
    return { get = function(_, k) return ctx[k] end }
  end
  function h:clearRouteCache()
    self.cleared = self.cleared + 1
    self.route_cached = false
  end
  function h:metadata()
    if self.metadata_wrapper == nil then
      if not self.route_cached then
        self.current_route = self.select(hm)
        self.route_cached = true
        self.reselections = self.reselections + 1
      end
      local md = self.route_metadata[self.current_route or ""] or {}
      self.metadata_wrapper = { get = function(_, k) return md[k] end }
    end
    return self.metadata_wrapper
  end
  function h:logErr(msg) self.logs[#self.logs + 1] = msg end
  function h:streamInfo()
    local md, route_name = self.dynamic_metadata, self.route_name
    return scoped(self, {
      dynamicMetadata = function(_)
        return {
          set = function(_, ns, k, v) md[ns .. ":" .. k] = v end,
          get = function(_, ns) -- the namespace's entries as a table, or nil (Envoy's)
            local out, prefix = nil, ns .. ":"
            for key, v in pairs(md) do
              if key:sub(1, #prefix) == prefix then
                out = out or {}
                out[key:sub(#prefix + 1)] = v
              end
            end
            return out
          end,
        }
      end,
      routeName = function(_) return route_name end,
    })
  end
  return h
end

return Handle
