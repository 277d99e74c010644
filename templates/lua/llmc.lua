-- llmc data plane: shapes LLM requests on routes that carry llmc's per-route context.
--
-- Runs in Envoy's Lua filter (LuaJIT, Lua 5.1 syntax). Envoy ships no JSON library, so this file
-- carries a small validating scanner for the request body: it checks the whole body is valid JSON,
-- finds the top-level members, and splices new values for `model` and `stream` into the original
-- text. Every other byte of the client's JSON is preserved as sent (escapes, number formats, key
-- order, nested objects). Per-route data arrives as the route's filter_context (see
-- compiler/translate/envoyfilter.py, lua_context); nothing in this file is generated.
--
-- Per request (only on llmc routes; the filter has no default script):
--   1. drop any client-sent x-llmc-provider header (clients cannot steer routing);
--   2. pick the backend (by weight when the rule has several) and, if weighted, set the routing
--      header and clear the route cache once, so Envoy re-selects the pinned route of that backend;
--   3. read and validate the body, set model/stream, set Authorization, :path and content-type
--      for the backend the request will actually reach;
--   4. answer bad requests with an OpenAI-format JSON error; never forward a half-rewritten request.

local byte, sub, find, format, concat, char = string.byte, string.sub, string.find, string.format,
  table.concat, string.char
local floor = math.floor

local ROUTING_HEADER = "x-llmc-provider"
local METADATA_NS = "llmc"
local MAX_DEPTH = 128
local KEY_TTL_SECONDS = 1
local MAX_CACHED_CONTEXTS = 512

local M = {}

---------------------------------------------------------------------------------------------------
-- JSON
---------------------------------------------------------------------------------------------------

local function skip_ws(s, i)
  return find(s, "[^ \t\r\n]", i) or (#s + 1)
end

-- s[i] is '"'; returns the index after the closing quote.
local function skip_string(s, i)
  local j = i + 1
  while true do
    local k = find(s, '[%z\1-\31"\\]', j)
    if not k then return nil, "unterminated string" end
    local c = byte(s, k)
    if c == 34 then return k + 1 end
    if c ~= 92 then return nil, "control character in string" end
    local e = byte(s, k + 1)
    if e == 117 then
      if not find(s, "^%x%x%x%x", k + 2) then return nil, "invalid \\u escape in string" end
      j = k + 6
    elseif e == 34 or e == 92 or e == 47 or e == 98 or e == 102 or e == 110 or e == 114 or e == 116 then
      j = k + 2
    else
      return nil, "invalid escape in string"
    end
  end
end

local function skip_digits(s, i)
  return find(s, "[^0-9]", i) or (#s + 1)
end

local function skip_number(s, i)
  local j = i
  if byte(s, j) == 45 then j = j + 1 end
  local c = byte(s, j)
  if c == 48 then
    j = j + 1
  elseif c and c >= 49 and c <= 57 then
    j = skip_digits(s, j + 1)
  else
    return nil, "invalid number"
  end
  if byte(s, j) == 46 then
    local k = skip_digits(s, j + 1)
    if k == j + 1 then return nil, "invalid number" end
    j = k
  end
  c = byte(s, j)
  if c == 101 or c == 69 then
    j = j + 1
    c = byte(s, j)
    if c == 43 or c == 45 then j = j + 1 end
    local k = skip_digits(s, j)
    if k == j then return nil, "invalid number" end
    j = k
  end
  return j
end

local skip_value

local function skip_array(s, i, depth)
  if depth > MAX_DEPTH then return nil, "JSON nesting is too deep" end
  local j = skip_ws(s, i + 1)
  if byte(s, j) == 93 then return j + 1 end
  while true do
    local e, err = skip_value(s, j, depth)
    if not e then return nil, err end
    j = skip_ws(s, e)
    local c = byte(s, j)
    if c == 44 then
      j = skip_ws(s, j + 1)
    elseif c == 93 then
      return j + 1
    else
      return nil, "expected ',' or ']' in array"
    end
  end
end

local function skip_object(s, i, depth)
  if depth > MAX_DEPTH then return nil, "JSON nesting is too deep" end
  local j = skip_ws(s, i + 1)
  if byte(s, j) == 125 then return j + 1 end
  while true do
    if byte(s, j) ~= 34 then return nil, "expected a string key in object" end
    local e, err = skip_string(s, j)
    if not e then return nil, err end
    j = skip_ws(s, e)
    if byte(s, j) ~= 58 then return nil, "expected ':' after object key" end
    e, err = skip_value(s, skip_ws(s, j + 1), depth)
    if not e then return nil, err end
    j = skip_ws(s, e)
    local c = byte(s, j)
    if c == 44 then
      j = skip_ws(s, j + 1)
    elseif c == 125 then
      return j + 1
    else
      return nil, "expected ',' or '}' in object"
    end
  end
end

skip_value = function(s, i, depth)
  local c = byte(s, i)
  if c == 34 then return skip_string(s, i) end
  if c == 123 then return skip_object(s, i, depth + 1) end
  if c == 91 then return skip_array(s, i, depth + 1) end
  if c == 116 then if sub(s, i, i + 3) == "true" then return i + 4 end
  elseif c == 102 then if sub(s, i, i + 4) == "false" then return i + 5 end
  elseif c == 110 then if sub(s, i, i + 3) == "null" then return i + 4 end
  elseif c == 45 or (c and c >= 48 and c <= 57) then return skip_number(s, i)
  end
  if c == nil then return nil, "unexpected end of JSON" end
  return nil, "invalid JSON value"
end

local function utf8_char(cp)
  if cp < 0x80 then return char(cp) end
  if cp < 0x800 then return char(0xC0 + floor(cp / 0x40), 0x80 + cp % 0x40) end
  if cp < 0x10000 then
    return char(0xE0 + floor(cp / 0x1000), 0x80 + floor(cp / 0x40) % 0x40, 0x80 + cp % 0x40)
  end
  return char(0xF0 + floor(cp / 0x40000), 0x80 + floor(cp / 0x1000) % 0x40,
    0x80 + floor(cp / 0x40) % 0x40, 0x80 + cp % 0x40)
end

local UNESCAPE = { [34] = '"', [92] = "\\", [47] = "/", [98] = "\b", [102] = "\f", [110] = "\n",
  [114] = "\r", [116] = "\t" }

-- Decodes the text between the quotes of an already validated JSON string.
local function decode_string(raw)
  if not find(raw, "\\", 1, true) then return raw end
  local out, i = {}, 1
  while true do
    local k = find(raw, "\\", i, true)
    if not k then
      out[#out + 1] = sub(raw, i)
      break
    end
    out[#out + 1] = sub(raw, i, k - 1)
    local e = byte(raw, k + 1)
    if e == 117 then
      local cp, adv = tonumber(sub(raw, k + 2, k + 5), 16), 6
      if cp >= 0xD800 and cp <= 0xDBFF and sub(raw, k + 6, k + 7) == "\\u" then
        local lo = tonumber(sub(raw, k + 8, k + 11), 16)
        if lo and lo >= 0xDC00 and lo <= 0xDFFF then
          cp, adv = 0x10000 + (cp - 0xD800) * 0x400 + (lo - 0xDC00), 12
        end
      end
      out[#out + 1] = utf8_char(cp)
      i = k + adv
    else
      out[#out + 1] = UNESCAPE[e]
      i = k + 2
    end
  end
  return concat(out)
end
M.decode_string = decode_string

local ESCAPE = { ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f", ["\n"] = "\\n",
  ["\r"] = "\\r", ["\t"] = "\\t" }

local function escape_char(c)
  return ESCAPE[c] or format("\\u%04x", byte(c))
end

-- JSON string literal for a Lua string (UTF-8 passes through unchanged).
local function encode_string(s)
  return '"' .. (s:gsub('[%z\1-\31"\\]', escape_char)) .. '"'
end
M.encode_string = encode_string

-- Scans a top-level JSON object. Returns an array of members {key, value_start, value_end}
-- (value_end exclusive) and the index of the closing brace, or nil and an error message.
function M.scan_object(s)
  local i = skip_ws(s, 1)
  if i > #s then return nil, "the request body is empty" end
  if byte(s, i) ~= 123 then
    local e = skip_value(s, i, 0)
    if e and skip_ws(s, e) > #s then return nil, "the request body must be a JSON object" end
    return nil, "the request body is not valid JSON"
  end
  local members = {}
  local j = skip_ws(s, i + 1)
  local close
  if byte(s, j) == 125 then
    close = j
  else
    while true do
      if byte(s, j) ~= 34 then return nil, "the request body is not valid JSON: expected a string key" end
      local e, err = skip_string(s, j)
      if not e then return nil, "the request body is not valid JSON: " .. err end
      local key = decode_string(sub(s, j + 1, e - 2))
      local k = skip_ws(s, e)
      if byte(s, k) ~= 58 then return nil, "the request body is not valid JSON: expected ':'" end
      local vstart = skip_ws(s, k + 1)
      local vend
      vend, err = skip_value(s, vstart, 1)
      if not vend then return nil, "the request body is not valid JSON: " .. err end
      members[#members + 1] = { key, vstart, vend }
      j = skip_ws(s, vend)
      local c = byte(s, j)
      if c == 44 then
        j = skip_ws(s, j + 1)
      elseif c == 125 then
        close = j
        break
      else
        return nil, "the request body is not valid JSON: expected ',' or '}'"
      end
    end
  end
  if skip_ws(s, close + 1) <= #s then return nil, "the request body is not valid JSON: data after the object" end
  return members, close
end

-- Sets top-level fields of the JSON object text `s`. `fields` is an array of {name, json_text};
-- an existing member keeps its place (later duplicates are dropped), a missing one is appended.
-- Returns the new text, or nil and an error message when `s` is not a JSON object.
function M.rewrite(s, fields)
  local members, close = M.scan_object(s)
  if not members then return nil, close end
  if #fields == 0 then return s end
  local wanted = {}
  for _, f in ipairs(fields) do wanted[f[1]] = f[2] end
  local out, cursor, prev_end, seen = {}, 1, nil, {}
  for idx = 1, #members do
    local m = members[idx]
    local value = wanted[m[1]]
    if value ~= nil then
      if not seen[m[1]] then
        seen[m[1]] = true
        out[#out + 1] = sub(s, cursor, m[2] - 1)
        out[#out + 1] = value
      else
        out[#out + 1] = sub(s, cursor, prev_end - 1)
      end
      cursor = m[3]
    end
    prev_end = m[3]
  end
  local adds = {}
  for _, f in ipairs(fields) do
    if not seen[f[1]] then adds[#adds + 1] = encode_string(f[1]) .. ":" .. f[2] end
  end
  if #adds > 0 then
    if prev_end then
      out[#out + 1] = sub(s, cursor, prev_end - 1)
      out[#out + 1] = "," .. concat(adds, ",")
      cursor = prev_end
    else
      out[#out + 1] = sub(s, cursor, close - 1)
      out[#out + 1] = concat(adds, ",")
      cursor = close
    end
  end
  out[#out + 1] = sub(s, cursor)
  return concat(out)
end

---------------------------------------------------------------------------------------------------
-- Per-route configuration
---------------------------------------------------------------------------------------------------

-- Prepares a filter_context (a table view of the protobuf Struct) once per id and worker.
function M.prepare(get)
  local cfg = { route = get("route"), rule = get("rule"), backends = {}, total = 0 }
  for i, b in ipairs(get("backends")) do
    local fields = {}
    if b.model ~= nil then fields[#fields + 1] = { "model", encode_string(b.model) } end
    if b.stream ~= nil then fields[#fields + 1] = { "stream", b.stream and "true" or "false" } end
    cfg.total = cfg.total + b.weight
    cfg.backends[i] = { provider = b.provider, path = b.path, model = b.model, weight = b.weight,
      upto = cfg.total, max_body = b.max_body, fields = fields, api_key = b.api_key,
      api_key_file = b.api_key_file }
  end
  cfg.weighted = #cfg.backends > 1
  return cfg
end

local contexts, ncontexts = {}, 0

local function load_context(h)
  local ctx = h:filterContext()
  if ctx == nil then return nil end
  local id = ctx:get("id")
  if id == nil then return nil end
  local cfg = contexts[id]
  if cfg == nil then
    cfg = M.prepare(function(k) return ctx:get(k) end)
    if ncontexts >= MAX_CACHED_CONTEXTS then contexts, ncontexts = {}, 0 end
    contexts[id], ncontexts = cfg, ncontexts + 1
  end
  return cfg
end

function M.pick(cfg, r)
  local target = r * cfg.total
  for _, b in ipairs(cfg.backends) do
    if target < b.upto then return b end
  end
  return cfg.backends[#cfg.backends]
end

-- API keys from mounted Secret files, re-read at most every KEY_TTL_SECONDS so that a rotated
-- Secret (kubelet swaps the files atomically) is used without a restart.
local keys = {}

local function read_key_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local v = f:read("*a")
  f:close()
  if v == nil then return nil end
  v = v:gsub("[\r\n]+$", "")
  if v == "" then return nil end
  return v
end

function M.api_key(b, now)
  if b.api_key_file == nil then return b.api_key end
  local entry = keys[b.api_key_file]
  if entry == nil or now >= entry.expires then
    entry = { value = read_key_file(b.api_key_file), expires = now + KEY_TTL_SECONDS }
    keys[b.api_key_file] = entry
  end
  return entry.value
end

---------------------------------------------------------------------------------------------------
-- Request handling
---------------------------------------------------------------------------------------------------

local function reply(h, status, etype, code, message)
  local body = '{"error":{"message":' .. encode_string(message) .. ',"type":"' .. etype ..
    '","param":null,"code":"' .. code .. '"}}'
  h:respond({ [":status"] = tostring(status), ["content-type"] = "application/json" }, body)
end
M.reply = reply

local function with_query(path, original)
  if find(path, "?", 1, true) then return path end
  local q = original and find(original, "?", 1, true)
  if q then return path .. sub(original, q) end
  return path
end

function M.on_request(h)
  local cfg = load_context(h)
  if cfg == nil then return end
  local headers = h:headers()
  headers:remove(ROUTING_HEADER)
  if headers:get(":method") ~= "POST" then
    return reply(h, 405, "invalid_request_error", "method_not_allowed",
      "llmc: only POST requests with a JSON chat completion body are accepted")
  end
  local b = cfg.backends[1]
  if cfg.weighted then
    b = M.pick(cfg, math.random())
    headers:replace(ROUTING_HEADER, b.provider)
    h:clearRouteCache()
  end
  local declared = tonumber(headers:get("content-length") or "")
  if declared and declared > b.max_body then
    return reply(h, 413, "invalid_request_error", "request_too_large",
      format("llmc: the request body is larger than the limit of %d bytes", b.max_body))
  end
  local key = M.api_key(b, os.time())
  if key == nil and b.api_key_file ~= nil then
    h:logErr("llmc: API key file for provider " .. b.provider .. " is missing or empty")
    return reply(h, 503, "server_error", "api_key_unavailable",
      "llmc: the API key for provider " .. b.provider .. " is not available")
  end
  local original_path = headers:get(":path")
  local body = h:body()
  local len = body and body:length() or 0
  if len == 0 then
    return reply(h, 400, "invalid_request_error", "invalid_json", "llmc: the request body is empty")
  end
  if len > b.max_body then
    return reply(h, 413, "invalid_request_error", "request_too_large",
      format("llmc: the request body is larger than the limit of %d bytes", b.max_body))
  end
  local s = body:getBytes(0, len)
  local out, err = M.rewrite(s, b.fields)
  if out == nil then
    return reply(h, 400, "invalid_request_error", "invalid_json", "llmc: " .. err)
  end
  if out ~= s then body:setBytes(out) end
  headers = h:headers() -- the wrapper from before body() is out of scope now
  if key ~= nil then headers:replace("authorization", "Bearer " .. key) end
  headers:replace(":path", with_query(b.path, original_path))
  headers:replace("content-type", "application/json")
  local md = h:streamInfo():dynamicMetadata()
  md:set(METADATA_NS, "provider", b.provider)
  md:set(METADATA_NS, "route", cfg.route)
  md:set(METADATA_NS, "rule", cfg.rule)
  if b.model ~= nil then md:set(METADATA_NS, "request_model", b.model) end
end

function envoy_on_request(h)
  local ok, err = pcall(M.on_request, h)
  if not ok then
    -- Errors raised here never carry request data or keys: only this file's own messages.
    h:logErr("llmc: internal error: " .. tostring(err))
    reply(h, 500, "server_error", "llmc_internal_error", "llmc: internal error while shaping the request")
  end
end

math.randomseed(os.time() + (tonumber((tostring({}):match("0x(%x+)")) or "0", 16) or 0) % 1000003)

return M
