-- A minimal stand-in for Envoy's Lua stream handle, for unit tests under LuaJIT (lupa).
-- Only what templates/lua/llmc.lua uses: headers(), body(), respond(), filterContext(),
-- clearRouteCache(), streamInfo():dynamicMetadata(), logErr(). respond() records the reply;
-- in Envoy it also stops the script, which llmc.lua never relies on (every reply is a return).
local Fake = {}

function Fake.handle(req)
  local h = { headers_map = req.headers, body_text = req.body, context = req.context,
              cleared = 0, metadata = {}, logs = {}, response = nil }
  local hm = h.headers_map
  local headers = {
    get = function(_, k) return hm[k] end,
    replace = function(_, k, v) hm[k] = v end,
    add = function(_, k, v) hm[k] = v end,
    remove = function(_, k) hm[k] = nil end,
  }
  function h:headers() return headers end
  function h:body()
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
  function h:clearRouteCache() self.cleared = self.cleared + 1 end
  function h:logErr(msg) self.logs[#self.logs + 1] = msg end
  function h:streamInfo()
    local md = self.metadata
    return { dynamicMetadata = function(_)
      return { set = function(_, ns, k, v) md[ns .. ":" .. k] = v end }
    end }
  end
  return h
end

return Fake
