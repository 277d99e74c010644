-- llmc data plane: shapes LLM requests on routes that carry llmc's per-route context.
--
-- Runs in Envoy's Lua filter (LuaJIT, Lua 5.1 syntax). Envoy ships no JSON library, so this file
-- carries a small validating scanner for the request body: it checks the whole body is valid JSON,
-- finds the top-level members, and splices new values for `model` and `stream` into the original
-- text. Every other byte of the client's JSON is preserved as sent (escapes, number formats, key
-- order, nested objects). Per-virtual-host data arrives as its filter_context (see
-- compiler/translate/envoyfilter.py, lua_context); nothing in this file is generated.
--
-- Per request (only on llmc virtual hosts; the filter has no default script):
--   1. pick the backend (by weight when the rule has several) and, if weighted, overwrite the
--      routing header x-llmc-provider (so a client-sent value cannot steer) and clear the route
--      cache once, so Envoy re-selects the pinned route of that backend; every llmc route removes
--      the header before the request goes upstream;
--   2. read and validate the body, set model/stream, set Authorization, :path and content-type
--      for the backend the request will actually reach;
--   3. answer bad requests with an OpenAI-format JSON error; never forward a half-rewritten request.

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

-- The scanner is written for LuaJIT's trace compiler: byte loops and *plain* string.find (both
-- compiled) instead of pattern matching (interpreted). Inside strings it jumps from quote to
-- quote; the next backslash and the next control character are found once and cached for the
-- whole body (they only move forward), so a 1 MiB body costs a few passes of memchr.
local HUGE = math.huge
local next_bs, next_ctl = 0, 0 -- cached positions of the next '\' and control byte; reset per body

local function reset_scan()
  next_bs, next_ctl = 0, 0
end

local function find_bs(s, j)
  if next_bs < j then next_bs = find(s, "\\", j, true) or HUGE end
  return next_bs
end

-- Position of the next control byte (< 0x20) at or after j. Lua's pattern matcher needs ~10 ns a
-- byte for a character class; a JIT-compiled FFI byte loop is ~20x faster. Envoy's LuaJIT has the
-- FFI (read-only access to the string's bytes here); without it, fall back to the pattern.
local scan_ctl
local has_ffi, ffi = pcall(require, "ffi")
if has_ffi then
  local cast = ffi.cast
  scan_ctl = function(s, j)
    local p = cast("const uint8_t *", s)
    for k = j - 1, #s - 1 do
      if p[k] < 32 then return k + 1 end
    end
    return HUGE
  end
else
  scan_ctl = function(s, j)
    return find(s, "[%z\1-\31]", j) or HUGE
  end
end

local function find_ctl(s, j)
  if next_ctl < j then next_ctl = scan_ctl(s, j) end
  return next_ctl
end

-- No Lua loops on the hot path: a loop inside the scanner's main loop makes LuaJIT abort and
-- finally blacklist the main loop's trace. Runs of whitespace longer than one byte (pretty-printed
-- JSON) and digits use a pattern search in C instead.
local function skip_ws(s, i)
  local c = byte(s, i)
  if c ~= 32 and c ~= 10 and c ~= 13 and c ~= 9 then return i end
  c = byte(s, i + 1)
  if c ~= 32 and c ~= 10 and c ~= 13 and c ~= 9 then return i + 1 end
  return find(s, "[^ \t\r\n]", i + 2) or (#s + 1)
end

local function is_hex(c)
  return c ~= nil and ((c >= 48 and c <= 57) or (c >= 65 and c <= 70) or (c >= 97 and c <= 102))
end

-- The rest of a string from j on, when it has escapes or control bytes (the slow path).
local function skip_string_escaped(s, j)
  while true do
    local q = find(s, '"', j, true)
    if not q then return nil, "unterminated string" end
    local b = find_bs(s, j)
    local stop = b < q and b or q
    if find_ctl(s, j) < stop then return nil, "control character in string" end
    if b > q then return q + 1 end
    local e = byte(s, b + 1)
    if e == 117 then
      if not (is_hex(byte(s, b + 2)) and is_hex(byte(s, b + 3)) and is_hex(byte(s, b + 4))
          and is_hex(byte(s, b + 5))) then
        return nil, "invalid \\u escape in string"
      end
      j = b + 6
    elseif e == 34 or e == 92 or e == 47 or e == 98 or e == 102 or e == 110 or e == 114 or e == 116 then
      j = b + 2
    else
      return nil, "invalid escape in string"
    end
  end
end

-- s[i] is '"'; returns the index after the closing quote.
local function skip_string(s, i)
  local q = find(s, '"', i + 1, true)
  if q and q < find_bs(s, i + 1) and q < find_ctl(s, i + 1) then return q + 1 end
  return skip_string_escaped(s, i + 1)
end

local function skip_digits(s, i)
  local c = byte(s, i)
  if c == nil or c < 48 or c > 57 then return i end
  return find(s, "[^0-9]", i + 1) or (#s + 1)
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

-- Literals and numbers: returns the index after the scalar starting at i, or nil.
local function skip_scalar(s, i, c)
  if c == 116 then
    if byte(s, i + 1) == 114 and byte(s, i + 2) == 117 and byte(s, i + 3) == 101 then return i + 4 end
  elseif c == 102 then
    if byte(s, i + 1) == 97 and byte(s, i + 2) == 108 and byte(s, i + 3) == 115 and byte(s, i + 4) == 101 then
      return i + 5
    end
  elseif c == 110 then
    if byte(s, i + 1) == 117 and byte(s, i + 2) == 108 and byte(s, i + 3) == 108 then return i + 4 end
  elseif c == 45 or (c and c >= 48 and c <= 57) then
    return skip_number(s, i)
  end
  if c == nil then return nil, "unexpected end of JSON" end
  return nil, "invalid JSON value"
end

-- Nested containers are validated by one loop with an explicit stack (no recursion, so the
-- trace compiler can compile it). States: what the next token may be.
local KEY_OR_END, KEY, VALUE_OR_END, VALUE, AFTER = 1, 2, 3, 4, 5
local stack = {}

-- s[i] is '{' or '['; returns the index after its matching bracket.
local function skip_container(s, i)
  local c = byte(s, i)
  local depth = 1
  stack[1] = c
  local state = c == 123 and KEY_OR_END or VALUE_OR_END
  i = i + 1
  while true do
    i = skip_ws(s, i)
    c = byte(s, i)
    local close = false
    if state == AFTER then
      local top = stack[depth]
      if c == 44 then
        state = top == 123 and KEY or VALUE
        i = i + 1
      elseif (c == 125 and top == 123) or (c == 93 and top == 91) then
        close = true
      else
        return nil, top == 123 and "expected ',' or '}' in object" or "expected ',' or ']' in array"
      end
    elseif state <= KEY then
      if c == 125 and state == KEY_OR_END then
        close = true
      elseif c == 34 then
        local e, err = skip_string(s, i)
        if not e then return nil, err end
        i = skip_ws(s, e)
        if byte(s, i) ~= 58 then return nil, "expected ':' after object key" end
        i = i + 1
        state = VALUE
      else
        return nil, "expected a string key in object"
      end
    elseif c == 93 and state == VALUE_OR_END then
      close = true
    elseif c == 123 or c == 91 then
      depth = depth + 1
      if depth > MAX_DEPTH then return nil, "JSON nesting is too deep" end
      stack[depth] = c
      state = c == 123 and KEY_OR_END or VALUE_OR_END
      i = i + 1
    else
      local e, err
      if c == 34 then e, err = skip_string(s, i) else e, err = skip_scalar(s, i, c) end
      if not e then return nil, err end
      i = e
      state = AFTER
    end
    if close then
      depth = depth - 1
      i = i + 1
      if depth == 0 then return i end
      state = AFTER
    end
  end
end

local function skip_value(s, i)
  local c = byte(s, i)
  if c == 34 then return skip_string(s, i) end
  if c == 123 or c == 91 then return skip_container(s, i) end
  return skip_scalar(s, i, c)
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
  reset_scan()
  local i = skip_ws(s, 1)
  if i > #s then return nil, "the request body is empty" end
  if byte(s, i) ~= 123 then
    local e = skip_value(s, i)
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
      vend, err = skip_value(s, vstart)
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

-- Sets top-level fields of the JSON object text `s`. `fields` is an array of {name, json_text,
-- keep}: an existing member keeps its place (later duplicates are dropped), a missing one is
-- appended; with `keep` set, a member the client sent is left as it is.
-- Returns the new text, or nil and an error message when `s` is not a JSON object.
function M.rewrite(s, fields)
  local members, close = M.scan_object(s)
  if not members then return nil, close end
  if #fields == 0 then return s end
  local wanted = {}
  for _, f in ipairs(fields) do
    if not f[3] then wanted[f[1]] = f[2] end
  end
  local present = {}
  for idx = 1, #members do present[members[idx][1]] = true end
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
    if not seen[f[1]] and not (f[3] and present[f[1]]) then
      adds[#adds + 1] = encode_string(f[1]) .. ":" .. f[2]
    end
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
-- Per-virtual-host configuration
---------------------------------------------------------------------------------------------------

-- Prepares one rule: its backends with pre-encoded body fields and cumulative weights.
local function prepare_rule(route, name, rule)
  local cfg = { rule_id = route .. "/" .. name, backends = {}, total = 0 }
  for i, b in ipairs(rule.backends) do
    local fields = {}
    if b.model ~= nil then fields[#fields + 1] = { "model", encode_string(b.model) } end
    if b.stream ~= nil then fields[#fields + 1] = { "stream", b.stream and "true" or "false" } end
    if b.stream == true and b.include_usage then
      -- OpenAI sends usage in a stream's last event only when asked; ask unless the client chose.
      fields[#fields + 1] = { "stream_options", '{"include_usage":true}', true }
    end
    cfg.total = cfg.total + b.weight
    cfg.backends[i] = { provider = b.provider, path = b.path, model = b.model, weight = b.weight,
      upto = cfg.total, max_body = b.max_body, fields = fields, api_key = b.api_key,
      api_key_file = b.api_key_file }
  end
  cfg.weighted = #cfg.backends > 1
  return cfg
end

-- Prepares a virtual host's filter_context (read through `get`) once per id and worker:
-- returns {route name -> prepared rule}.
function M.prepare(get)
  local route, rules, by_route = get("route"), {}, {}
  for name, rule in pairs(get("rules")) do rules[name] = prepare_rule(route, name, rule) end
  for route_name, rule_name in pairs(get("routes")) do by_route[route_name] = rules[rule_name] end
  return by_route
end

local contexts, ncontexts = {}, 0

-- The prepared rule for this request, `false` when the route is unknown to the context, or nil
-- when the route carries no llmc context at all (not our traffic). `info` is h:streamInfo().
local function load_rule(h, info)
  local ctx = h:filterContext()
  if ctx == nil then return nil end
  local id = ctx:get("id")
  if id == nil then return nil end
  local by_route = contexts[id]
  if by_route == nil then
    by_route = M.prepare(function(k) return ctx:get(k) end)
    if ncontexts >= MAX_CACHED_CONTEXTS then contexts, ncontexts = {}, 0 end
    contexts[id], ncontexts = by_route, ncontexts + 1
  end
  return by_route[info:routeName()] or false
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

local function with_query(path, original)
  if find(path, "?", 1, true) then return path end
  local q = original and find(original, "?", 1, true)
  if q then return path .. sub(original, q) end
  return path
end

-- Every call into Envoy costs; this path makes as few as it can (see README, "Performance").
function M.on_request(h)
  local info = h:streamInfo()
  local cfg = load_rule(h, info)
  if cfg == nil then return end
  local headers = h:headers()
  if cfg == false then
    -- The virtual host is llmc's but this route is not in its context: never forward unshaped.
    h:logErr("llmc: route " .. tostring(info:routeName()) .. " has no llmc rule")
    return reply(h, 500, "server_error", "llmc_route_unknown",
      "llmc: this route has no LLM configuration (is the VirtualService out of date?)")
  end
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
  local key = b.api_key
  if b.api_key_file ~= nil then key = M.api_key(b, os.time()) end
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
  -- Each metadata entry costs ~1.5% of throughput on small requests: three, no more.
  local md = h:streamInfo():dynamicMetadata() -- like headers, `info` is out of scope after body()
  md:set(METADATA_NS, "provider", b.provider)
  md:set(METADATA_NS, "rule", cfg.rule_id)
  if b.model ~= nil then md:set(METADATA_NS, "request_model", b.model) end
end

---------------------------------------------------------------------------------------------------
-- Response: token usage, read from the body as it streams past (never buffered by Envoy)
---------------------------------------------------------------------------------------------------

local MAX_JSON_SCAN = 1048576 -- a non-streaming response larger than this is passed, not read
local MAX_SSE_LINE = 262144 -- an SSE line longer than this is not read

local function count(text, name)
  local v = text:match('"' .. name .. '"%s*:%s*(%d+)[%s,}]')
  return v and tonumber(v)
end

-- Usage and model from a JSON object's text: prompt, completion, total (numbers or nil), model.
function M.usage_of(s)
  local members = M.scan_object(s)
  if not members then return nil end
  local p, c, t, model
  for i = 1, #members do
    local m = members[i]
    if m[1] == "usage" and byte(s, m[2]) == 123 then
      local u = sub(s, m[2], m[3] - 1)
      p, c, t = count(u, "prompt_tokens"), count(u, "completion_tokens"), count(u, "total_tokens")
    elseif m[1] == "model" and byte(s, m[2]) == 34 then
      model = decode_string(sub(s, m[2] + 1, m[3] - 2))
    end
  end
  return p, c, t, model
end

-- The accounting state of one response; `feed` takes body chunks, `finish` returns the usage.
function M.new_usage(sse)
  local u = { sse = sse, parts = {}, size = 0, carry = "" }

  local function take(json)
    local p, c, t, model = M.usage_of(json)
    if model ~= nil and u.model == nil then u.model = model end
    if p ~= nil or c ~= nil or t ~= nil then u.prompt, u.completion, u.total = p, c, t end
  end

  function u.feed(s)
    if not u.sse then
      if u.size + #s <= MAX_JSON_SCAN then u.parts[#u.parts + 1] = s end
      u.size = u.size + #s
      return
    end
    local text = u.carry .. s
    local start = 1
    while true do
      local nl = find(text, "\n", start, true)
      if not nl then break end
      if byte(text, start) == 100 and sub(text, start, start + 4) == "data:" then
        local line = sub(text, start + 5, nl - 1)
        if find(line, '"usage"', 1, true) or (u.model == nil and find(line, '"model"', 1, true)) then
          take(line)
        end
      end
      start = nl + 1
    end
    u.carry = sub(text, start)
    if #u.carry > MAX_SSE_LINE then u.carry = "" end
  end

  function u.finish()
    if not u.sse and u.size <= MAX_JSON_SCAN and u.size > 0 then take(concat(u.parts)) end
    return u.prompt, u.completion, u.total, u.model
  end

  return u
end

-- Runs only on llmc's virtual hosts (the filter has no default script), and not for the replies
-- this filter sent itself; a request it did not shape never reaches a provider.
function M.on_response(h)
  local ctype = h:headers():get("content-type") or ""
  local u = M.new_usage(find(ctype, "text/event-stream", 1, true) ~= nil)
  for chunk in h:bodyChunks() do
    local n = chunk:length()
    if n > 0 then u.feed(chunk:getBytes(0, n)) end
  end
  local p, c, t, model = u.finish()
  local md = h:streamInfo():dynamicMetadata()
  if model ~= nil then md:set(METADATA_NS, "response_model", model) end
  if p ~= nil then md:set(METADATA_NS, "request_prompt_tokens", p) end
  if c ~= nil then md:set(METADATA_NS, "request_completion_tokens", c) end
  if t ~= nil then md:set(METADATA_NS, "request_total_tokens", t) end
end

function envoy_on_response(h)
  local ok, err = pcall(M.on_response, h)
  if not ok then
    -- Accounting never breaks a response: the body has already gone on chunk by chunk.
    h:logErr("llmc: internal error while reading usage: " .. tostring(err))
  end
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
