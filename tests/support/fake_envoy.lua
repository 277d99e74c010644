-- A minimal stand-in for Envoy's Lua stream handle, for unit tests under LuaJIT (lupa).
-- Only what templates/lua/llmc.lua uses: headers(), body(), respond(), filterContext(),
-- clearRouteCache(), metadata(), streamInfo():dynamicMetadata(), streamInfo():routeName(),
-- logErr(). respond() records the reply; in Envoy it also stops the script, which llmc.lua never
-- relies on (every reply is a return).
-- Route selection as Envoy does it: the route matched at the start (`route_name`) stays cached;
-- after clearRouteCache(), metadata() selects again with the headers as they are then: the route
-- named by the routing header if it is one of `pinned` (the VirtualService's pinned routes), else
-- the first route. streamInfo():routeName() keeps naming the first route, and metadata() returns
-- the wrapper it built first until the next body() (as Envoy memoizes it between yields).
-- Like Envoy, wrappers returned by headers() and streamInfo() before a body() call are out of
-- scope afterwards: using one raises "object used outside of proper scope".
local Fake = {}

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

function Fake.handle(req)
  local h = { headers_map = req.headers, body_text = req.body, context = req.context,
              route_name = req.route_name, current_route = req.route_name, pinned = req.pinned or {},
              pin_header = req.pin_header, generation = 0, route_cached = true,
              cleared = 0, dynamic_metadata = {}, logs = {}, response = nil }
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
    local fake = self
    return {
      length = function(_) return #fake.body_text end,
      getBytes = function(_, i, n) return fake.body_text:sub(i + 1, i + n) end,
      setBytes = function(_, s) fake.body_text = s; hm["content-length"] = tostring(#s) end,
    }
  end
  function h:respond(hdrs, body) self.response = { headers = hdrs, body = body } end
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
        local pin = self.pin_header and hm[self.pin_header]
        self.current_route = (pin and self.pinned[pin]) and pin or self.route_name
        self.route_cached = true
      end
      local name = self.current_route
      self.metadata_wrapper = { get = function(_, k) if k == "route" then return name end end }
    end
    return self.metadata_wrapper
  end
  function h:logErr(msg) self.logs[#self.logs + 1] = msg end
  function h:streamInfo()
    local md, route_name = self.dynamic_metadata, self.route_name
    return scoped(self, {
      dynamicMetadata = function(_)
        return { set = function(_, ns, k, v) md[ns .. ":" .. k] = v end }
      end,
      routeName = function(_) return route_name end,
    })
  end
  return h
end

return Fake
