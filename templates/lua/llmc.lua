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
-- quote; the next quote, the next backslash and the next "bad" byte (control byte or invalid
-- UTF-8) are found once and cached for the whole body (they only move forward), so scanning is
-- linear in the body size whatever the number of escapes: a 1 MiB body costs a few passes of memchr.
local HUGE = math.huge
local next_q, next_bs, next_bad = 0, 0, 0 -- cached positions; reset per body

local function reset_scan()
  next_q, next_bs, next_bad = 0, 0, 0
end

local function find_q(s, j)
  if next_q < j then next_q = find(s, '"', j, true) or HUGE end
  return next_q
end

local function find_bs(s, j)
  if next_bs < j then next_bs = find(s, "\\", j, true) or HUGE end
  return next_bs
end

-- Position of the next byte at or after j that cannot appear raw in a JSON string: a control byte
-- (< 0x20) or the start of an invalid UTF-8 sequence (RFC 3629: no overlong forms, no surrogates,
-- nothing above U+10FFFF). j is always at a character boundary (after a quote or an escape).
-- Lua's pattern matcher needs ~10 ns a byte for a character class; a JIT-compiled FFI byte loop is
-- ~20x faster. Envoy's LuaJIT has the FFI (read-only access to the string's bytes here); without
-- it, fall back to a pattern that finds control bytes only.
local scan_bad
local has_ffi, ffi = pcall(require, "ffi")
if has_ffi then
  local cast = ffi.cast
  scan_bad = function(s, j)
    local p = cast("const uint8_t *", s)
    local n = #s
    local k = j - 1
    while k < n do
      local c = p[k]
      if c < 128 then
        if c < 32 then return k + 1 end
        k = k + 1
      else
        -- lead byte: how many continuation bytes, and the allowed range of the first one
        local need, lo, hi = 0, 128, 191
        if c >= 194 and c <= 223 then need = 1
        elseif c == 224 then need, lo = 2, 160
        elseif c == 237 then need, hi = 2, 159
        elseif c >= 225 and c <= 239 then need = 2
        elseif c == 240 then need, lo = 3, 144
        elseif c == 244 then need, hi = 3, 143
        elseif c >= 241 and c <= 243 then need = 3
        else return k + 1 end
        if k + need >= n then return k + 1 end
        local c1 = p[k + 1]
        if c1 < lo or c1 > hi then return k + 1 end
        if need >= 2 then
          local c2 = p[k + 2]
          if c2 < 128 or c2 > 191 then return k + 1 end
          if need == 3 then
            local c3 = p[k + 3]
            if c3 < 128 or c3 > 191 then return k + 1 end
          end
        end
        k = k + need + 1
      end
    end
    return HUGE
  end
else
  scan_bad = function(s, j)
    return find(s, "[%z\1-\31]", j) or HUGE
  end
end

local function find_bad(s, j)
  if next_bad < j then next_bad = scan_bad(s, j) end
  return next_bad
end

local function bad_byte(s, k)
  if byte(s, k) < 32 then return "control character in string" end
  return "invalid UTF-8 in string"
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

-- The rest of a string from j on, when it has escapes or bad bytes (the slow path).
local function skip_string_escaped(s, j)
  while true do
    local q = find_q(s, j)
    if q == HUGE then return nil, "unterminated string" end
    local b = find_bs(s, j)
    local stop = b < q and b or q
    local bad = find_bad(s, j)
    if bad < stop then return nil, bad_byte(s, bad) end
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
  local q = find_q(s, i + 1)
  if q < find_bs(s, i + 1) and q < find_bad(s, i + 1) then return q + 1 end
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

-- Scans a top-level JSON object. Returns an array of members {key, value_start, value_end,
-- key_start} (value_end exclusive) and the index of the closing brace, or nil and an error message.
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
      members[#members + 1] = { key, vstart, vend, j }
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

-- Sets or deletes top-level fields of the JSON object text `s`. `fields` is an array of
-- {name, json_text}, where json_text `false` deletes the member: an existing member keeps its
-- place (later duplicates are dropped, so the upstream sees one member), a missing one is
-- appended. `members` and `close` are the result of scan_object(s) when the caller has it.
-- Returns the new text, or nil and an error message when `s` is not a JSON object.
function M.rewrite(s, fields, members, close)
  if members == nil then
    members, close = M.scan_object(s)
    if not members then return nil, close end
  end
  if #fields == 0 then return s end
  local wanted = {}
  for _, f in ipairs(fields) do wanted[f[1]] = f[2] end
  local out, cursor, prev_end, seen, kept, skip_lead = {}, 1, nil, {}, 0, false
  for idx = 1, #members do
    local m = members[idx]
    if skip_lead then
      -- the members before this one were all deleted: drop the separator in front of this one
      cursor, skip_lead = m[4], false
    end
    local value = wanted[m[1]]
    if value == nil or (value ~= false and not seen[m[1]]) then
      if value ~= nil then
        seen[m[1]] = true
        out[#out + 1] = sub(s, cursor, m[2] - 1)
        out[#out + 1] = value
        cursor = m[3]
      end
      kept = kept + 1
    elseif kept > 0 then
      out[#out + 1] = sub(s, cursor, prev_end - 1) -- drop ",<ws>key:value" after the previous member
      cursor = m[3]
    else
      out[#out + 1] = sub(s, cursor, m[4] - 1) -- the first kept member will start here
      cursor, skip_lead = m[3], true
    end
    prev_end = m[3]
  end
  local adds = {}
  for _, f in ipairs(fields) do
    if f[2] ~= false and not seen[f[1]] then adds[#adds + 1] = encode_string(f[1]) .. ":" .. f[2] end
  end
  if skip_lead then cursor = close end -- every member was deleted
  if #adds > 0 then
    if kept > 0 then
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

-- What the client said about streaming: true, false or nil (not said; the last of duplicate
-- members counts, as in the JSON parsers of providers), and whether it sent stream_options.
-- Returns nil and a message when `stream` is not a boolean.
local function client_stream(s, members)
  local stream, options = nil, false
  for idx = 1, #members do
    local m = members[idx]
    if m[1] == "stream" then
      local v = sub(s, m[2], m[3] - 1)
      if v == "true" then stream = true elseif v == "false" then stream = false else
        return nil, nil, "'stream' must be a boolean"
      end
    elseif m[1] == "stream_options" then
      options = true
    end
  end
  return stream, options
end

-- The request body for backend `b` (see README, "What the data plane does"): the configured model
-- replaces the client's; the client's explicit `stream` wins over the configured one, which
-- applies when the client says nothing; `stream_options` is dropped when the request does not
-- stream (OpenAI-compatible servers reject it then) and, when llmc turned streaming on, asks for
-- usage unless the client chose. Returns the new text, or nil, message and the offending field.
function M.shape(s, b)
  local members, close = M.scan_object(s)
  if not members then return nil, close end
  local said, options, err = client_stream(s, members)
  if err then return nil, err, "stream" end
  local fields = {}
  if b.model_json ~= nil then fields[1] = { "model", b.model_json } end
  local stream = said
  if stream == nil then stream = b.stream end
  if stream ~= nil then fields[#fields + 1] = { "stream", stream and "true" or "false" } end
  if stream ~= true then
    if options then fields[#fields + 1] = { "stream_options", false } end
  elseif said == nil and b.include_usage and not options then
    -- OpenAI sends usage in a stream's last event only when asked; ask when llmc chose to stream.
    fields[#fields + 1] = { "stream_options", '{"include_usage":true}' }
  end
  return M.rewrite(s, fields, members, close)
end

---------------------------------------------------------------------------------------------------
-- Per-virtual-host configuration
---------------------------------------------------------------------------------------------------

-- Prepares one rule: its backends with pre-encoded body fields, cumulative weights, and the
-- record of the provider API each speaks (`protocols`: auth header and prefix, fixed headers).
local function prepare_rule(route, name, rule, protocols)
  local cfg = { rule_id = route .. "/" .. name, backends = {}, total = 0 }
  for i, b in ipairs(rule.backends) do
    local proto = protocols[b.protocol]
    cfg.total = cfg.total + b.weight
    -- the protocol's fixed headers, then the backend's own (e.g. anthropic-version), sorted
    local merged, headers = {}, {}
    for k, v in pairs(proto.headers or {}) do merged[k] = v end
    for k, v in pairs(b.headers or {}) do merged[k] = v end
    for k, v in pairs(merged) do headers[#headers + 1] = { k, v } end
    table.sort(headers, function(x, y) return x[1] < y[1] end)
    local auth_header = b.auth_header or proto.auth_header
    cfg.backends[i] = { provider = b.provider, path = b.path, model = b.model, weight = b.weight,
      upto = cfg.total, max_body = b.max_body, api_key = b.api_key, api_key_file = b.api_key_file,
      model_json = b.model ~= nil and encode_string(b.model) or nil, stream = b.stream,
      include_usage = b.include_usage, pin = b.pin, format = proto.format or "openai",
      max_tokens = b.max_tokens, client_key = proto.client_key == true,
      auth_header = auth_header, auth_prefix = b.auth_prefix or proto.auth_prefix, headers = headers,
      -- a key sent in another header replaces the client's credential: the client's own
      -- Authorization (its key for llmc, or for another provider) never reaches this provider
      drop_authorization = auth_header ~= "authorization" }
  end
  cfg.weighted = #cfg.backends > 1
  return cfg
end

-- The prepared rule of a pinned route: reached only through the internal routing header.
local PINNED = { pinned = true }

-- Prepares a virtual host's filter_context (read through `get`) once per id and worker:
-- returns {by_route = {route name -> prepared rule, or PINNED}, pin_header, buffer_limit}.
function M.prepare(get)
  local route, rules, by_route, protocols = get("route"), {}, {}, get("protocols")
  for name, rule in pairs(get("rules")) do
    local cfg = prepare_rule(route, name, rule, protocols)
    rules[name] = cfg
    for _, b in ipairs(cfg.backends) do
      if b.pin ~= nil then by_route[b.pin] = PINNED end
    end
  end
  for route_name, rule_name in pairs(get("routes")) do by_route[route_name] = rules[rule_name] end
  return { by_route = by_route, pin_header = get("pin_header"), buffer_limit = get("buffer_limit") }
end

local contexts, ncontexts = {}, 0

-- The prepared virtual host context, or nil when the route carries no llmc context at all (not
-- our traffic).
local function load_vhost(h)
  local ctx = h:filterContext()
  if ctx == nil then return nil end
  local id = ctx:get("id")
  if id == nil then return nil end
  local vh = contexts[id]
  if vh == nil then
    vh = M.prepare(function(k) return ctx:get(k) end)
    if ncontexts >= MAX_CACHED_CONTEXTS then contexts, ncontexts = {}, 0 end
    contexts[id], ncontexts = vh, ncontexts + 1
  end
  return vh
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

-- An OpenAI-format error, attributed in access logs and metrics like a shaped request (the rule,
-- and the provider when one was picked).
local function reply(h, status, etype, code, message, cfg, b, param)
  local body = '{"error":{"message":' .. encode_string(message) .. ',"type":"' .. etype ..
    '","param":' .. (param and encode_string(param) or "null") .. ',"code":"' .. code .. '"}}'
  if cfg ~= nil then
    local md = h:streamInfo():dynamicMetadata()
    md:set(METADATA_NS, "rule", cfg.rule_id)
    if b ~= nil then md:set(METADATA_NS, "provider", b.provider) end
  end
  h:respond({ [":status"] = tostring(status), ["content-type"] = "application/json" }, body)
end

local function too_large(h, cfg, b, limit)
  return reply(h, 413, "invalid_request_error", "request_too_large",
    format("llmc: the request body is larger than the limit of %d bytes", limit), cfg, b)
end

local function with_query(path, original)
  if find(path, "?", 1, true) then return path end
  local q = original and find(original, "?", 1, true)
  if q then return path .. sub(original, q) end
  return path
end

-- Makes Envoy select the route again, now, with the request headers as they are, and returns
-- the new route's name. Envoy would otherwise select it lazily in the router, with the headers as
-- they are *after* shaping. h:metadata() (route metadata) is the one call that makes Envoy resolve
-- a cleared route cache at once; h:route() and streamInfo():routeName() keep naming the first
-- route. Every llmc route carries its own name in its metadata (an EnvoyFilter HTTP_ROUTE patch).
-- Envoy builds the metadata wrapper once per script run between yields, so this works once per
-- request before body() — which is all the request path needs.
local function reselect(h)
  h:clearRouteCache()
  return h:metadata():get("route")
end

-- Step 1: the rule of the matched route. A pinned route is reachable only through the internal
-- routing header, which clients must not send: matched first, it means the client did.
local function resolve_rule(vh, info)
  return vh.by_route[info:routeName()]
end

-- Step 2: the backend. For a weighted rule, pick by weight and pin the request to that backend's
-- route with the internal header (set before any other header changes, so no header the rule
-- matches on has changed yet); then check that Envoy selected exactly that route, and fail
-- closed otherwise: a request is only ever shaped for the route that sends it.
local function pick_backend(h, vh, cfg, headers)
  if not cfg.weighted then return cfg.backends[1] end
  local b = M.pick(cfg, math.random())
  headers:replace(vh.pin_header, b.pin)
  local final = reselect(h)
  if final ~= b.pin then
    h:logErr("llmc: pinned route " .. b.pin .. " was not selected (got " .. tostring(final) .. ")")
    return nil
  end
  return b
end

-- The request headers for backend `b` (a pure function, like M.shape: any entry point that shapes a
-- request for a backend calls both): the key in the protocol's auth header, the provider's path
-- with the client's query string, the protocol's fixed headers. Token usage is read from the
-- response, so the provider is asked not to compress it; the client gets what Envoy sends it (the
-- sidecar adds no compression).
function M.request_headers(b, key, original_path)
  local out = { { ":path", with_query(b.path, original_path) }, { "content-type", "application/json" },
    { "accept-encoding", "identity" } }
  if key ~= nil then
    out[#out + 1] = { b.auth_header, b.auth_prefix .. key }
    if b.drop_authorization then out[#out + 1] = { "authorization", false } end -- false: remove
  end
  for i = 1, #b.headers do out[#out + 1] = b.headers[i] end
  return out
end

-- The client's own key, for protocols that do not read Authorization (Anthropic's x-api-key): with
-- no key configured, `Authorization: Bearer <key>` (what the openai SDK sends) moves to the
-- protocol's header. nil when the client sent no bearer token.
function M.client_key(authorization)
  if authorization == nil then return nil end
  local key = authorization:match("^[Bb]earer%s+(%S+)%s*$")
  return key
end

-- Step 3: the credential of backend `b` (a literal, or a mounted Secret file); false when missing.
local function credential(b)
  if b.api_key_file == nil then return b.api_key end
  return M.api_key(b, os.time()) or false
end

-- Every call into Envoy costs; this path makes as few as it can (see README, "Performance").
function M.on_request(h)
  local vh = load_vhost(h)
  if vh == nil then return end
  local info = h:streamInfo()
  local cfg = resolve_rule(vh, info)
  if cfg == PINNED then
    return reply(h, 400, "invalid_request_error", "reserved_header",
      "llmc: the request carries the internal header " .. vh.pin_header .. "; remove it")
  end
  if cfg == nil then
    -- The virtual host is llmc's but this route is not in its context: never forward unshaped.
    h:logErr("llmc: route " .. tostring(info:routeName()) .. " has no llmc rule")
    return reply(h, 500, "server_error", "llmc_route_unknown",
      "llmc: this route has no LLM configuration (is the VirtualService out of date?)")
  end
  local headers = h:headers()
  if headers:get(":method") ~= "POST" then
    return reply(h, 405, "invalid_request_error", "method_not_allowed",
      "llmc: only POST requests with a JSON chat completion body are accepted", cfg)
  end
  local b = pick_backend(h, vh, cfg, headers)
  if b == nil then
    return reply(h, 500, "server_error", "llmc_route_mismatch",
      "llmc: the request was routed to an unexpected route; nothing was sent", cfg)
  end
  local declared = tonumber(headers:get("content-length") or "")
  if declared and declared > b.max_body then return too_large(h, cfg, b, b.max_body) end
  local key = credential(b)
  if key == false then
    h:logErr("llmc: API key file for provider " .. b.provider .. " is missing or empty")
    return reply(h, 503, "server_error", "api_key_unavailable",
      "llmc: the API key for provider " .. b.provider .. " is not available", cfg, b)
  end
  if key == nil and b.client_key then key = M.client_key(headers:get("authorization")) end
  local original_path = headers:get(":path")
  local body = h:body()
  local len = body and body:length() or 0
  if len == 0 then
    return reply(h, 400, "invalid_request_error", "invalid_json", "llmc: the request body is empty", cfg, b)
  end
  if len > b.max_body then return too_large(h, cfg, b, b.max_body) end
  local s = body:getBytes(0, len)
  local out, err, param = M.shape(s, b)
  if out == nil then
    return reply(h, 400, "invalid_request_error", "invalid_json", "llmc: " .. err, cfg, b, param)
  end
  if #out > vh.buffer_limit then return too_large(h, cfg, b, b.max_body) end
  if out ~= s then body:setBytes(out) end
  headers = h:headers() -- the wrapper from before body() is out of scope now
  local set = M.request_headers(b, key, original_path)
  for i = 1, #set do
    local v = set[i][2]
    if v then headers:replace(set[i][1], v) else headers:remove(set[i][1]) end
  end
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
