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
--
-- Providers of another protocol (README, "Providers that do not speak OpenAI"): their record's
-- `format` makes M.shape translate the body instead of splicing it (Anthropic Messages:
-- M.to_anthropic, with a real JSON decoder/encoder that keeps numbers as text), and the response
-- path translate the answer back (M.on_translated_response), streams event by event as they pass.

local byte, sub, find, format, concat, char = string.byte, string.sub, string.find, string.format,
  table.concat, string.char
local floor = math.floor

local METADATA_NS = "llmc"
local TRANSLATE_HEADER = "x-llmc-translate" -- compiler/names.py: added by routes of translated providers
local FAILOVER_HEADER = "x-llmc-failover" -- compiler/names.py: added by the pinned routes of failover rules
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
-- Lua's pattern matcher needs ~10 ns a byte for a character class; a JIT-compiled FFI loop is
-- ~20x faster byte by byte, and ~2.5x faster again reading plain ASCII eight bytes at a time (this
-- pass was two thirds of the scan of a plain body). Envoy's LuaJIT has the FFI (read-only access
-- to the string's bytes here); without it, fall back to a pattern that finds control bytes only.
local scan_bad
local has_ffi, ffi = pcall(require, "ffi")
if has_ffi then
  local cast, band, bor, bnot = ffi.cast, bit.band, bit.bor, bit.bnot
  local u8p, u64p = ffi.typeof("const uint8_t *"), ffi.typeof("const uint64_t *")
  local HIGH, SPACES = 0x8080808080808080ULL, 0x2020202020202020ULL
  scan_bad = function(s, j)
    local p = cast(u8p, s)
    local n = #s
    local k = j - 1
    while k < n do
      -- Eight bytes at a time while they are all plain ASCII (0x20-0x7f): a word has a byte
      -- >= 0x80 when x & HIGH ~= 0, and one < 0x20 when (x - SPACES) & ~x & HIGH ~= 0 (the
      -- borrow sets bit 7 of such a byte). Any other word is looked at byte by byte.
      local x = k + 8 <= n and cast(u64p, p + k)[0] or HIGH
      local c = p[k]
      if band(bor(x, band(x - SPACES, bnot(x))), HIGH) == 0 then
        k = k + 8
      elseif c < 128 then
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
    -- dense escapes (`\u4f60\u597d…`, what json.dumps sends by default) follow each other: look at
    -- the next byte before searching
    local b = byte(s, j) == 92 and j or find_bs(s, j)
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
      if cp >= 0xD800 and cp <= 0xDFFF then
        -- a lone surrogate has no UTF-8 form: U+FFFD, as Go's encoding/json decodes it
        local lo = cp <= 0xDBFF and sub(raw, k + 6, k + 7) == "\\u" and tonumber(sub(raw, k + 8, k + 11), 16)
        if lo and lo >= 0xDC00 and lo <= 0xDFFF then
          cp, adv = 0x10000 + (cp - 0xD800) * 0x400 + (lo - 0xDC00), 12
        else
          cp = 0xFFFD
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

-- The output of M.rewrite is assembled from `out`, a list of literal strings and byte ranges of
-- `s` (two numbers: first, last). With LuaJIT's string.buffer (Envoy's LuaJIT has it), a range is
-- copied straight from `s` into one reused buffer, and the buffer into the result: two copies of
-- the body. sub() + table.concat took three (the range's own string, concat's scratch buffer, the
-- result) and a new allocation the size of the body. The buffer keeps its memory between
-- requests unless the last body was over KEEP_BUFFER bytes: at most 1 MiB per Lua VM (Envoy runs
-- one per worker for each listener's filter and each failover cluster's upstream filter).
local KEEP_BUFFER = 1048576
local has_buffer, strbuf = pcall(require, "string.buffer")
local out_buf = has_buffer and has_ffi and strbuf.new() or nil
M.assembly = out_buf ~= nil and "string.buffer" or "concat" -- which way M.rewrite assembles (tests)
local charp = has_ffi and ffi.typeof("const char *") or nil

local function range(out, i, j)
  if j >= i then
    out[#out + 1] = i
    out[#out + 1] = j
  end
end

local function assemble(s, out)
  local n = #out
  if out_buf ~= nil then
    local b = out_buf
    b:reset()
    local p = ffi.cast(charp, s)
    local k = 1
    while k <= n do
      local v = out[k]
      if type(v) == "string" then
        b:put(v)
        k = k + 1
      else
        b:putcdata(p + v - 1, out[k + 1] - v + 1)
        k = k + 2
      end
    end
    local text = b:tostring()
    if #b > KEEP_BUFFER then b:free() else b:reset() end
    return text
  end
  local parts, k = {}, 1
  while k <= n do
    local v = out[k]
    if type(v) == "string" then
      parts[#parts + 1] = v
      k = k + 1
    else
      parts[#parts + 1] = sub(s, v, out[k + 1])
      k = k + 2
    end
  end
  return concat(parts)
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
        range(out, cursor, m[2] - 1)
        out[#out + 1] = value
        cursor = m[3]
      end
      kept = kept + 1
    elseif kept > 0 then
      range(out, cursor, prev_end - 1) -- drop ",<ws>key:value" after the previous member
      cursor = m[3]
    else
      range(out, cursor, m[4] - 1) -- the first kept member will start here
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
      range(out, cursor, prev_end - 1)
      out[#out + 1] = "," .. concat(adds, ",")
      cursor = prev_end
    else
      range(out, cursor, close - 1)
      out[#out + 1] = concat(adds, ",")
      cursor = close
    end
  end
  range(out, cursor, #s)
  return assemble(s, out)
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
-- replaces the client's (`client_model_json`, when given, stands in for an unconfigured one;
-- `scanned` is {members, close} when the caller already scanned `s`); the client's explicit `stream` wins over the configured one, which
-- applies when the client says nothing; `stream_options` is dropped when the request does not
-- stream (OpenAI-compatible servers reject it then) and, when llmc turned streaming on, asks for
-- usage unless the client chose. Returns the new text, or nil, message and the offending field.
function M.shape(s, b, client_model_json, scanned)
  if b.format == "anthropic" then return M.to_anthropic(s, b) end -- translated, not shaped
  local members, close
  if scanned ~= nil then
    members, close = scanned[1], scanned[2]
  else
    members, close = M.scan_object(s)
    if not members then return nil, close end
  end
  local said, options, err = client_stream(s, members)
  if err then return nil, err, "stream" end
  local fields = {}
  local model_json = b.model_json or client_model_json
  if model_json ~= nil then fields[1] = { "model", model_json } end
  local stream = said
  if stream == nil then stream = b.stream end
  if stream ~= nil then fields[#fields + 1] = { "stream", stream and "true" or "false" } end
  if stream ~= true then
    if options then fields[#fields + 1] = { "stream_options", false } end
  elseif not options and (said == nil and b.include_usage or said == true and b.limit_usage) then
    -- OpenAI sends usage in a stream's last event only when asked; ask when llmc chose to stream,
    -- and on a token-limited rule (the charge needs it), where the client that did not ask must
    -- not see the answer: the response path drops that event (note "openai+usage").
    fields[#fields + 1] = { "stream_options", '{"include_usage":true}' }
    if said == true then
      local out, err, param = M.rewrite(s, fields, members, close)
      return out, err, param, out ~= nil and "openai+usage" or nil
    end
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
      include_usage = b.include_usage, limit_usage = b.limit_usage, limit_model = b.limit_model, pin = b.pin, base_path = b.base_path, base_query = b.base_query or "",
      format = proto.format or "openai",
      max_tokens = b.max_tokens, client_key = proto.client_key == true,
      auth_header = auth_header, auth_prefix = b.auth_prefix or proto.auth_prefix, headers = headers,
      -- a key sent in another header replaces the client's credential: the client's own
      -- Authorization (its key for llmc, or for another provider) never reaches this provider
      drop_authorization = auth_header ~= "authorization" }
  end
  cfg.failover = rule.failover == true
  cfg.weighted = #cfg.backends > 1 or cfg.failover
  return cfg
end

-- The prepared rule of a pinned route: reached only through the internal routing header.
local PINNED = { pinned = true }

-- Prepares a virtual host's filter_context (read through `get`) once per id and worker:
-- returns {by_route = {route name -> prepared rule, or PINNED}, pin_header, buffer_limit}.
function M.prepare(get)
  local route, rules, by_route, protocols = get("route"), {}, {}, get("protocols")
  local pinned, weighted, names = {}, {}, {}
  local all = get("rules")
  for name in pairs(all) do names[#names + 1] = name end
  table.sort(names)
  for _, name in ipairs(names) do
    local cfg = prepare_rule(route, name, all[name], protocols)
    rules[name] = cfg
    if cfg.weighted then weighted[#weighted + 1] = cfg end
    for _, b in ipairs(cfg.backends) do
      if b.pin ~= nil then
        by_route[b.pin] = PINNED
        pinned[b.pin] = { cfg, b }
      end
    end
  end
  local failover = false
  for _, cfg in pairs(rules) do failover = failover or cfg.failover end
  for route_name, rule_name in pairs(get("routes")) do by_route[route_name] = rules[rule_name] end
  -- the body fields rules match on: `body_fields`, or the model alone; each `<f>_header`, `<f>_limit`
  local fields, body = get("body_fields") or (get("model_header") and { "model" }), nil
  for i, f in ipairs(fields or {}) do
    body = body or {}
    body[i] = { name = f, header = get(f .. "_header"), limit = get(f .. "_limit") }
  end
  return { by_route = by_route, pinned = pinned, weighted = weighted, pin_header = get("pin_header"),
    failover = failover, body = body,
    buffer_limit = get("buffer_limit"), max_body = get("max_body"),
    nomatch = get("nomatch"), order_header = get("order_header") }
end

local contexts, ncontexts = {}, 0
local prepare_attempt -- the upstream filter's context (see "Failover")

-- The prepared context of this route: a virtual host's ({by_route = ...}), or in the upstream
-- filter of a provider cluster one try's ({attempt = true, ...}); nil when the route carries no
-- llmc context at all (not our traffic). Two calls into Envoy per request (filterContext, get
-- "id"); the rest is read once per id and worker.
local function load_context(h)
  local ctx = h:filterContext()
  if ctx == nil then return nil end
  local id = ctx:get("id")
  if id == nil then return nil end
  local entry = contexts[id]
  if entry == nil then
    if ctx:get("attempt") ~= nil then
      entry = prepare_attempt(ctx)
    else
      entry = M.prepare(function(k) return ctx:get(k) end)
    end
    if ncontexts >= MAX_CACHED_CONTEXTS then contexts, ncontexts = {}, 0 end
    contexts[id], ncontexts = entry, ncontexts + 1
  end
  return entry
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

-- What the access log says about a request shaped for backend `b` of rule `cfg`: three entries at
-- most (each costs a call into Envoy). `md` is the stream's dynamic metadata.
local function record(md, cfg, b, endpoint)
  md:set(METADATA_NS, "provider", b.provider)
  md:set(METADATA_NS, "rule", cfg.rule_id)
  local model = endpoint == "chat" and b.model or nil
  if model ~= nil then md:set(METADATA_NS, "request_model", model) end
end

-- An OpenAI-format error, attributed in access logs and metrics like a shaped request: the rule,
-- and once a provider was picked the provider and the model the request would have carried (for
-- a provider with a base path that depends on the endpoint: recorded only when the caller knew it).
local function reply(h, status, etype, code, message, cfg, b, param)
  local body = '{"error":{"message":' .. encode_string(message) .. ',"type":"' .. etype ..
    '","param":' .. (param and encode_string(param) or "null") .. ',"code":"' .. code .. '"}}'
  if cfg ~= nil then
    local md = h:streamInfo():dynamicMetadata()
    if b ~= nil then
      record(md, cfg, b, b.base_path == nil and "chat" or nil)
    else
      md:set(METADATA_NS, "rule", cfg.rule_id)
    end
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
-- request before body() — which is all the request path needs. The failover mark is read only
-- when a failover rule may be the one selected (`failover`).
local function reselect(h, failover)
  h:clearRouteCache()
  local md = h:metadata()
  if failover then return md:get("route"), md:get("failover") end
  return md:get("route")
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
  if cfg.failover then headers:replace(vh.order_header, "0") end -- see "Failover" below
  local final, failover = reselect(h, cfg.failover)
  if final ~= b.pin then
    h:logErr("llmc: pinned route " .. b.pin .. " was not selected (got " .. tostring(final) .. ")")
    return nil
  end
  if cfg.failover and failover ~= true then return nil, "failover" end
  return b
end

-- The request headers for backend `b` (a pure function, like M.shape: any entry point that shapes a
-- request for a backend calls both): the key in the protocol's auth header, the provider's path
-- with the client's query string, the protocol's fixed headers. Token usage is read from the
-- response, so the provider is asked not to compress it; the client gets what Envoy sends it (the
-- sidecar adds no compression).
function M.request_headers(b, key, original_path, path)
  local out = { { ":path", with_query(path or b.path, original_path) }, { "content-type", "application/json" },
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

-- Which OpenAI endpoint a request is for, from its path (query string ignored): "chat" for "/" and
-- paths ending in /chat/completions, "embeddings", "completions", or nil (unknown: 404). Only for
-- backends with a base path; every POST to one without is a chat completion (ASM's behaviour).
function M.endpoint_of(path)
  local p = path and path:match("^[^?]*") or "/"
  if p == "/" or sub(p, -17) == "/chat/completions" then return "chat" end
  if sub(p, -11) == "/embeddings" then return "embeddings" end
  if sub(p, -12) == "/completions" then return "completions" end
  return nil
end

local function endpoint_for(b, original_path)
  if b.base_path == nil then return "chat" end
  return M.endpoint_of(original_path)
end

local function unknown_endpoint(h, cfg, b, original_path)
  return reply(h, 404, "invalid_request_error", "unknown_url", "llmc: unknown OpenAI endpoint " ..
    (original_path or ""):match("^[^?]*") .. " (chat/completions, embeddings and completions are served)", cfg, b)
end

-- The body for `endpoint` of backend `b` (a pure function): a chat completion is shaped (M.shape);
-- other endpoints keep the client's model and get no stream fields, and are still validated.
-- Returns the body, or nil and the error, its parameter and the translation note (M.shape's).
local function body_for(endpoint, s, b, model_json, scanned)
  if endpoint == "chat" then return M.shape(s, b, model_json, scanned) end
  return M.rewrite(s, {}, scanned and scanned[1], scanned and scanned[2])
end

-- The last step, once rule, backend, credential and body are known: the endpoint, the body, the
-- headers, the metadata (unless `recorded`: the caller recorded it before body(), with the stream
-- info wrapper it already had). `model_json` is the client's model (JSON text) when it chose the
-- rule and no model is configured: written back so duplicates collapse to the model that routed.
local function forward(h, vh, cfg, b, key, body, s, original_path, scanned, model_json, recorded)
  local path, endpoint = b.path, endpoint_for(b, original_path)
  if b.base_path ~= nil then
    if endpoint == nil then return unknown_endpoint(h, cfg, b, original_path) end
    if endpoint ~= "chat" then path = b.base_path .. "/" .. endpoint .. b.base_query end
  end
  local out, err, param, note = body_for(endpoint, s, b, model_json, scanned)
  if out == nil then
    return reply(h, 400, "invalid_request_error", "invalid_json", "llmc: " .. err, cfg, b, param)
  end
  if #out > vh.buffer_limit then return too_large(h, cfg, b, b.max_body) end
  if out ~= s then body:setBytes(out) end
  local headers = h:headers() -- wrappers from before body() are out of scope now
  local set = M.request_headers(b, key, original_path, path)
  for i = 1, #set do
    local v = set[i][2]
    if v then headers:replace(set[i][1], v) else headers:remove(set[i][1]) end
  end
  if recorded and note == nil then return end
  local md = h:streamInfo():dynamicMetadata() -- wrappers from before body() are out of scope now
  if not recorded then record(md, cfg, b, endpoint) end
  if note ~= nil then md:set(METADATA_NS, "translate", note) end -- the response path translates back
end

local function missing_key(h, cfg, b)
  h:logErr("llmc: API key file for provider " .. b.provider .. " is missing or empty")
  return reply(h, 503, "server_error", "api_key_unavailable",
    "llmc: the API key for provider " .. b.provider .. " is not available", cfg, b)
end

-- The body as a string, or nil after answering (empty, or over `limit`).
local function read_body(h, cfg, b, limit)
  local body = h:body()
  local len = body and body:length() or 0
  if len == 0 then
    reply(h, 400, "invalid_request_error", "invalid_json", "llmc: the request body is empty", cfg, b)
    return nil
  end
  if len > limit then
    too_large(h, cfg, b, limit)
    return nil
  end
  return body, body:getBytes(0, len)
end

-- Which filter this Lua VM serves: Envoy gives every filter config its own VM per worker, so a VM
-- runs either the downstream filter or the upstream filter of one provider cluster, never both.
-- Set by every request; the response path of the same stream runs after it, in the same VM.
local upstream_vm = false

-- Every call into Envoy costs; this path makes as few as it can (see README, "Performance").
function M.on_request(h)
  local vh = load_context(h)
  if vh == nil then return end
  upstream_vm = vh.attempt == true
  if upstream_vm then return M.on_attempt(h, vh) end
  if vh.body ~= nil then return M.on_model_request(h, vh) end
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
      "llmc: only POST requests with a JSON body are accepted", cfg)
  end
  local b, why = pick_backend(h, vh, cfg, headers)
  if why == "failover" then return M.failover_unsupported(h, cfg) end
  if b == nil then
    return reply(h, 500, "server_error", "llmc_route_mismatch",
      "llmc: the request was routed to an unexpected route; nothing was sent", cfg)
  end
  if cfg.failover then return M.failover_request(h, vh, cfg, b, headers) end
  local original_path = headers:get(":path")
  -- recorded now, with this segment's stream info wrapper (after body() it would take a new one);
  -- llmc's own replies from here on record the same again
  record(info:dynamicMetadata(), cfg, b, endpoint_for(b, original_path))
  local declared = tonumber(headers:get("content-length") or "")
  if declared and declared > b.max_body then return too_large(h, cfg, b, b.max_body) end
  local key = credential(b)
  if key == false then return missing_key(h, cfg, b) end
  if key == nil and b.client_key then key = M.client_key(headers:get("authorization")) end
  local body, s = read_body(h, cfg, b, b.max_body)
  if body == nil then return end
  return forward(h, vh, cfg, b, key, body, s, original_path, nil, nil, true)
end

---------------------------------------------------------------------------------------------------
-- Routing by the body's model (virtual hosts with `model` matches)
---------------------------------------------------------------------------------------------------

-- The client's value of body field `name` (e.g. "model") for routing: the last top-level member
-- (as providers' JSON parsers read duplicates) if it is a string of at most `limit` bytes without
-- control characters; else nil (such a request matches no condition on it). Returns the decoded
-- value and its JSON text.
function M.routable_field(s, members, name, limit)
  local raw
  for idx = 1, #members do
    local m = members[idx]
    if m[1] == name then raw = byte(s, m[2]) == 34 and sub(s, m[2], m[3] - 1) or nil end
  end
  if raw == nil then return nil end
  local model = decode_string(sub(raw, 2, -2))
  if #model > limit or find(model, "[%z\1-\31\127]") then return nil end
  return model, raw
end

-- " <pin> <pin> … ": one weighted pick for every weighted rule of the virtual host; the pinned
-- routes of model-routed hosts match the rule's conditions and "the list holds my name".
local function picks(vh)
  local out = { " " }
  for i = 1, #vh.weighted do out[#out + 1] = M.pick(vh.weighted[i], math.random()).pin .. " " end
  return concat(out)
end

-- The filter reads the body before Envoy picks the rule: it exposes each body field rules match on
-- in its internal header (a client-sent value is overwritten or removed), picks a provider for every
-- weighted rule, and makes Envoy select the route once, before any other header changes (the first
-- h:metadata() after body() resolves the cleared route cache; see `reselect`). The route it lands
-- on names the rule, and for a weighted rule the provider too. One forced re-selection per request.
function M.on_model_request(h, vh)
  local headers = h:headers()
  if headers:get(":method") ~= "POST" then
    return reply(h, 405, "invalid_request_error", "method_not_allowed",
      "llmc: only POST requests with a JSON body are accepted (GET /v1/models lists the models)")
  end
  local declared = tonumber(headers:get("content-length") or "")
  if declared and declared > vh.max_body then return too_large(h, nil, nil, vh.max_body) end
  local original_path = headers:get(":path")
  local body, s = read_body(h, nil, nil, vh.max_body)
  if body == nil then return end
  local members, close = M.scan_object(s)
  if not members then return reply(h, 400, "invalid_request_error", "invalid_json", "llmc: " .. close) end
  headers = h:headers()
  local model, model_json
  for i = 1, #vh.body do
    local f = vh.body[i]
    local value, raw = M.routable_field(s, members, f.name, f.limit)
    if value ~= nil then headers:replace(f.header, value) else headers:remove(f.header) end
    if f.name == "model" then model, model_json = value, raw end
  end
  if #vh.weighted > 0 then headers:replace(vh.pin_header, picks(vh)) else headers:remove(vh.pin_header) end
  -- failover rules read the order of their tries from this header when Envoy selects the route
  if vh.order_header ~= nil then headers:replace(vh.order_header, "0") end
  local name, failover = reselect(h, vh.failover)
  if name ~= nil and name == vh.nomatch then
    return reply(h, 404, "invalid_request_error", "model_not_found", model and
      ("llmc: no rule of this host serves model " .. model) or "llmc: no rule of this host matches the request")
  end
  local cfg, b
  local pinned = vh.pinned[name or ""]
  if pinned ~= nil then
    cfg, b = pinned[1], pinned[2]
  else
    cfg = vh.by_route[name or ""]
    if cfg == nil or cfg == PINNED or cfg.weighted then
      h:logErr("llmc: model routing selected route " .. tostring(name) .. ", which is not one to shape on")
      return reply(h, 500, "server_error", "llmc_route_mismatch",
        "llmc: the request was routed to an unexpected route; nothing was sent", cfg ~= PINNED and cfg or nil)
    end
    b = cfg.backends[1]
  end
  if #s > b.max_body then return too_large(h, cfg, b, b.max_body) end
  if cfg.failover then
    -- each try is shaped by the upstream filter of its provider's cluster (see "Failover")
    if failover ~= true then return M.failover_unsupported(h, cfg) end
    return M.failover_accept(h, cfg, b, s, model_json, { members, close }, original_path)
  end
  local key = credential(b)
  if key == false then return missing_key(h, cfg, b) end
  if key == nil and b.client_key then key = M.client_key(headers:get("authorization")) end
  if b.limit_model and model ~= nil then
    -- a token limit keyed by model reads it here, at the check and at the charge (the internal
    -- model header is gone by then)
    h:streamInfo():dynamicMetadata():set(METADATA_NS, "request_model", model)
  end
  return forward(h, vh, cfg, b, key, body, s, original_path, { members, close }, model_json)
end

---------------------------------------------------------------------------------------------------
-- Response: token usage, read as the body passes (small JSON answers whole, the rest chunk by chunk)
---------------------------------------------------------------------------------------------------

local MAX_JSON_SCAN = 1048576 -- a non-streaming response larger than this is passed, not read
local MAX_SSE_LINE = 262144 -- an SSE line longer than this is not read
local MAX_BUFFERED_RESPONSE = 65536 -- a JSON response up to this size is read with body()

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
    elseif m[1] == "model" and byte(s, m[2]) == 34 and m[3] - m[2] > 2 then
      -- "" is no model (Azure's first streamed chunk): the first non-empty one counts
      model = decode_string(sub(s, m[2] + 1, m[3] - 2))
    end
  end
  return p, c, t, model
end

-- The accounting state of one response; `feed` takes body chunks, `finish` returns the usage. Of a
-- stream's events the first model counts, and each usage field keeps the last value an event gave
-- it (a later usage object without a field does not erase it: what was recorded stays recorded).
function M.new_usage(sse)
  local u = { sse = sse, parts = {}, size = 0, carry = "" }

  local function take(json)
    local p, c, t, model = M.usage_of(json)
    if model ~= nil and u.model == nil then u.model = model end
    u.prompt, u.completion, u.total = p or u.prompt, c or u.completion, t or u.total
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

---------------------------------------------------------------------------------------------------
-- JSON values: decoding and encoding for translated protocols (README, "Providers")
---------------------------------------------------------------------------------------------------

-- The OpenAI path above never decodes: it splices. Translation needs values, so this decodes a
-- text the scanner has validated into Lua values and encodes them back: objects keep their key
-- order (OBJ: keys, map; a duplicate key keeps its first place and its last value, as Python's
-- json does), arrays are ARR {n = count, ...}, null is NULL, and numbers stay their original text
-- (NUM {text}): Lua numbers are doubles, which would turn 0.7 into 0.69999… or round integers
-- above 2^53. RAW {text} is JSON text passed through as it is (tool schemas, tool arguments).
local NULL = setmetatable({}, { __name = "null" })
local OBJ, ARR, NUM, RAW = { __name = "object" }, { __name = "array" }, { __name = "number" }, { __name = "raw" }
M.NULL = NULL

local function is_obj(v) return type(v) == "table" and getmetatable(v) == OBJ end
local function is_arr(v) return type(v) == "table" and getmetatable(v) == ARR end

local function oget(o, k)
  if is_obj(o) then return o.map[k] end
  return nil
end

local function oset(o, k, v)
  if v == nil then return end
  if o.map[k] == nil then o.keys[#o.keys + 1] = k end
  o.map[k] = v
end

-- An object from key/value pairs (nil values are left out).
local function obj(...)
  local o = setmetatable({ keys = {}, map = {} }, OBJ)
  for i = 1, select("#", ...), 2 do
    local k, v = select(i, ...)
    oset(o, k, v)
  end
  return o
end

local function arr(list)
  list = list or {}
  list.n = #list
  return setmetatable(list, ARR)
end

local function apush(a, v)
  a.n = a.n + 1
  a[a.n] = v
end

local function raw(text) return setmetatable({ text }, RAW) end

local function present(v) -- nil for a missing member or an explicit null
  if v == NULL then return nil end
  return v
end

-- The JSON text of a decoded object or array, as it was sent.
local function source_of(v) return sub(v.s, v.i, v.j - 1) end

local decode_at

local function decode_container(s, i, c)
  local close = c == 123 and 125 or 93
  local v = c == 123 and setmetatable({ keys = {}, map = {}, s = s, i = i }, OBJ)
    or setmetatable({ n = 0, s = s, i = i }, ARR)
  i = skip_ws(s, i + 1)
  if byte(s, i) == close then
    v.j = i + 1
    return v, i + 1
  end
  while true do
    if c == 123 then
      local e = skip_string(s, i)
      local k = decode_string(sub(s, i + 1, e - 2))
      local item
      item, i = decode_at(s, skip_ws(s, e) + 1)
      if v.map[k] == nil then v.keys[#v.keys + 1] = k end
      v.map[k] = item
    else
      local item
      item, i = decode_at(s, i)
      v.n = v.n + 1
      v[v.n] = item
    end
    i = skip_ws(s, i)
    if byte(s, i) ~= 44 then
      v.j = i + 1
      return v, i + 1
    end
    i = skip_ws(s, i + 1)
  end
end

-- The value at i of an already validated text, and the index after it.
decode_at = function(s, i)
  i = skip_ws(s, i)
  local c = byte(s, i)
  if c == 34 then
    local e = skip_string(s, i)
    return decode_string(sub(s, i + 1, e - 2)), e
  elseif c == 123 or c == 91 then
    return decode_container(s, i, c)
  elseif c == 116 then
    return true, i + 4
  elseif c == 102 then
    return false, i + 5
  elseif c == 110 then
    return NULL, i + 4
  end
  local e = skip_number(s, i)
  return setmetatable({ sub(s, i, e - 1) }, NUM), e
end

-- Decodes a JSON text: the value, or nil and a message when it is not valid JSON.
function M.decode(s)
  reset_scan()
  local i = skip_ws(s, 1)
  if i > #s then return nil, "empty JSON text" end
  local e, err = skip_value(s, i)
  if not e then return nil, err end
  if skip_ws(s, e) <= #s then return nil, "data after the JSON value" end
  reset_scan()
  return (decode_at(s, i))
end

local function encode_into(v, out)
  local t = type(v)
  if t == "string" then
    out[#out + 1] = encode_string(v)
  elseif t == "boolean" then
    out[#out + 1] = v and "true" or "false"
  elseif t == "number" then -- computed by this file: token counts, indexes, timestamps
    out[#out + 1] = (v == floor(v) and v > -2 ^ 53 and v < 2 ^ 53) and format("%d", v) or format("%.17g", v)
  elseif v == NULL then
    out[#out + 1] = "null"
  else
    local mt = getmetatable(v)
    if mt == NUM or mt == RAW then
      out[#out + 1] = v[1]
    elseif mt == OBJ then
      out[#out + 1] = "{"
      local first = true
      for _, k in ipairs(v.keys) do
        if not first then out[#out + 1] = "," end
        first = false
        out[#out + 1] = encode_string(k)
        out[#out + 1] = ":"
        encode_into(v.map[k], out)
      end
      out[#out + 1] = "}"
    elseif mt == ARR then
      out[#out + 1] = "["
      for i = 1, v.n do
        if i > 1 then out[#out + 1] = "," end
        encode_into(v[i], out)
      end
      out[#out + 1] = "]"
    else
      error("llmc: cannot encode a " .. t)
    end
  end
end

-- Compact JSON text of a value built from the types above.
function M.encode(v)
  local out = {}
  encode_into(v, out)
  return concat(out)
end

---------------------------------------------------------------------------------------------------
-- Anthropic Messages: OpenAI chat request -> Messages request (called from M.shape)
---------------------------------------------------------------------------------------------------

-- Request fields that would change the shape of the answer and have no Messages equivalent: the
-- request is refused (400) rather than answered differently. Every other field without a mapping
-- is tuning only and dropped (README, "Providers").
local function refused(req)
  local n = oget(req, "n")
  if n ~= nil and n ~= NULL and not (getmetatable(n) == NUM and tonumber(n[1]) == 1) then
    return "n", "'n' other than 1 (several choices) is not supported by this provider"
  end
  if oget(req, "logprobs") == true then return "logprobs", "'logprobs' is not supported by this provider" end
  local tl = oget(req, "top_logprobs")
  if tl ~= nil and tl ~= NULL then return "top_logprobs", "'top_logprobs' is not supported by this provider" end
  local rf = oget(req, "response_format")
  if rf ~= nil and rf ~= NULL and oget(rf, "type") ~= "text" then
    return "response_format", "'response_format' other than text is not supported by this provider"
  end
  local audio = oget(req, "audio")
  if audio ~= nil and audio ~= NULL then return "audio", "audio output is not supported by this provider" end
  local modalities = oget(req, "modalities")
  if is_arr(modalities) then
    for i = 1, modalities.n do
      if modalities[i] ~= "text" then return "modalities", "output modalities other than text are not supported by this provider" end
    end
  end
  return nil
end

local IMAGE_TYPES = { ["image/jpeg"] = true, ["image/png"] = true, ["image/gif"] = true, ["image/webp"] = true }

local function image_block(part)
  local url = oget(oget(part, "image_url"), "url")
  if type(url) ~= "string" then return nil, "an image_url part needs image_url.url" end
  local mt, data = url:match("^data:([^;,]+);base64,(.*)$")
  if mt then
    if not IMAGE_TYPES[mt] then return nil, "image type " .. mt .. " is not supported by this provider" end
    return obj("type", "image", "source", obj("type", "base64", "media_type", mt, "data", data))
  end
  if sub(url, 1, 8):lower() == "https://" then return obj("type", "image", "source", obj("type", "url", "url", url)) end
  return nil, "an image URL must be https:// or a base64 data: URL"
end

-- Content blocks of a message's `content`: a string, or an array of parts (text; images where
-- `images`), or null (no blocks).
local function content_blocks(content, images, blocks)
  if content == nil or content == NULL then return blocks end
  if type(content) == "string" then
    apush(blocks, obj("type", "text", "text", content))
    return blocks
  end
  if not is_arr(content) then return nil, "'content' must be a string or an array of parts" end
  for i = 1, content.n do
    local part = content[i]
    local ptype = oget(part, "type")
    if ptype == "text" and type(oget(part, "text")) == "string" then
      apush(blocks, obj("type", "text", "text", oget(part, "text")))
    elseif ptype == "refusal" and type(oget(part, "refusal")) == "string" then
      apush(blocks, obj("type", "text", "text", oget(part, "refusal")))
    elseif ptype == "image_url" and images then
      local block, err = image_block(part)
      if not block then return nil, err end
      apush(blocks, block)
    else
      return nil, "content part type " .. tostring(ptype) .. " is not supported here by this provider"
    end
  end
  return blocks
end

local function tool_use_blocks(calls, blocks)
  if calls == nil or calls == NULL then return blocks end
  if not is_arr(calls) then return nil, "'tool_calls' must be an array" end
  for i = 1, calls.n do
    local call = calls[i]
    local fn = oget(call, "function")
    local id, name, args = oget(call, "id"), oget(fn, "name"), oget(fn, "arguments")
    if type(id) ~= "string" or type(name) ~= "string" or type(args) ~= "string" then
      return nil, "a tool call needs id, function.name and function.arguments (a string)"
    end
    local input = args == "" and obj() or M.decode(args)
    if not is_obj(input) then return nil, "tool call arguments must be a JSON object" end
    apush(blocks, obj("type", "tool_use", "id", id, "name", name,
      "input", input.s and raw(source_of(input)) or input))
  end
  return blocks
end

-- OpenAI messages -> Anthropic `system` blocks and alternating `messages` (consecutive messages of
-- one role are merged into one, as tool results must be).
local function translate_messages(messages)
  if not is_arr(messages) or messages.n == 0 then return nil, nil, "'messages' must be a non-empty array" end
  local system, out = arr(), arr()
  for i = 1, messages.n do
    local m = messages[i]
    local role = oget(m, "role")
    local blocks, err
    if role == "system" or role == "developer" then
      blocks, err = content_blocks(oget(m, "content"), false, system)
      if not blocks then return nil, nil, err end
    else
      local target
      if role == "user" then
        blocks, err = content_blocks(oget(m, "content"), true, arr())
      elseif role == "assistant" then
        blocks, err = content_blocks(oget(m, "content"), false, arr())
        if blocks then blocks, err = tool_use_blocks(oget(m, "tool_calls"), blocks) end
      elseif role == "tool" then
        local id = oget(m, "tool_call_id")
        if type(id) ~= "string" then return nil, nil, "a tool message needs tool_call_id" end
        local inner
        inner, err = content_blocks(oget(m, "content"), false, arr())
        if inner then
          blocks = arr({ obj("type", "tool_result", "tool_use_id", id, "content", inner) })
        end
        role = "user"
      else
        return nil, nil, "message role " .. tostring(role) .. " is not supported by this provider"
      end
      if not blocks then return nil, nil, err end
      local last = out[out.n]
      if last ~= nil and oget(last, "role") == role then
        target = oget(last, "content")
        for k = 1, blocks.n do apush(target, blocks[k]) end
      else
        apush(out, obj("role", role, "content", blocks))
      end
    end
  end
  return system, out
end

local TOOL_CHOICE = { none = "none", auto = "auto", required = "any" }

local function translate_tools(req)
  local tools, choice = oget(req, "tools"), oget(req, "tool_choice")
  local out
  if tools ~= nil and tools ~= NULL then
    if not is_arr(tools) then return nil, nil, "tools", "'tools' must be an array" end
    out = arr()
    for i = 1, tools.n do
      local fn = oget(tools[i], "function")
      if oget(tools[i], "type") ~= "function" or type(oget(fn, "name")) ~= "string" then
        return nil, nil, "tools", "only function tools with a name are supported by this provider"
      end
      local params = oget(fn, "parameters")
      apush(out, obj("name", oget(fn, "name"), "description", oget(fn, "description"),
        "input_schema", is_obj(params) and raw(source_of(params)) or obj("type", "object")))
    end
  end
  local tc
  if type(choice) == "string" then
    if not TOOL_CHOICE[choice] then return nil, nil, "tool_choice", "unknown tool_choice " .. choice end
    tc = obj("type", TOOL_CHOICE[choice])
  elseif is_obj(choice) then
    local name = oget(oget(choice, "function"), "name")
    if type(name) ~= "string" then return nil, nil, "tool_choice", "tool_choice needs function.name" end
    tc = obj("type", "tool", "name", name)
  end
  if oget(req, "parallel_tool_calls") == false and out ~= nil then
    tc = tc or obj("type", "auto")
    if oget(tc, "type") ~= "none" then oset(tc, "disable_parallel_tool_use", true) end
  end
  return out, tc
end

-- The Messages request for an OpenAI chat request `s` (already known to be a JSON object) sent to
-- backend `b`. Returns the text and a note for the response path ("anthropic", or
-- "anthropic+usage" when a streaming client asked for usage), or nil, message, field.
function M.to_anthropic(s, b)
  local req, err = M.decode(s)
  if err then return nil, "the request body is not valid JSON: " .. err end
  if not is_obj(req) then return nil, "the request body must be a JSON object" end
  local param, why = refused(req)
  if param then return nil, why, param end
  local model = b.model or oget(req, "model")
  if type(model) ~= "string" then return nil, "'model' is required", "model" end
  local stream = oget(req, "stream")
  if stream ~= nil and stream ~= NULL and type(stream) ~= "boolean" then return nil, "'stream' must be a boolean", "stream" end
  local system, messages, merr = translate_messages(oget(req, "messages"))
  if not system then return nil, merr, "messages" end
  local tools, choice, tparam, terr = translate_tools(req)
  if tparam then return nil, terr, tparam end
  local max_tokens = present(oget(req, "max_completion_tokens")) or present(oget(req, "max_tokens")) or b.max_tokens
  local stop = oget(req, "stop")
  if type(stop) == "string" then stop = arr({ stop }) elseif not is_arr(stop) then stop = nil end
  local user = oget(req, "user")
  local out = obj("model", model, "max_tokens", max_tokens, "system", system.n > 0 and system or nil,
    "messages", messages, "temperature", present(oget(req, "temperature")), "top_p", present(oget(req, "top_p")),
    "stop_sequences", stop, "stream", stream == true or nil, "tools", tools, "tool_choice", choice,
    "metadata", type(user) == "string" and obj("user_id", user) or nil)
  local note = "anthropic"
  if stream == true and oget(oget(req, "stream_options"), "include_usage") == true then note = "anthropic+usage" end
  return M.encode(out), nil, nil, note
end

---------------------------------------------------------------------------------------------------
-- Anthropic Messages: response -> OpenAI chat completion, stream -> chat.completion.chunk events
---------------------------------------------------------------------------------------------------

local FINISH = { end_turn = "stop", stop_sequence = "stop", max_tokens = "length", tool_use = "tool_calls",
  refusal = "content_filter", pause_turn = "stop", model_context_window_exceeded = "length" }

local function count_of(v)
  if getmetatable(v) == NUM then return tonumber(v[1]) end
  return nil
end

-- OpenAI usage from Anthropic usage: prompt_tokens includes the cache read and cache creation
-- tokens (as OpenAI's includes its cached tokens; the cache reads are also in
-- prompt_tokens_details.cached_tokens). Returns the object and prompt, completion, total.
local function usage_from(u, prev)
  prev = prev or {}
  local input = count_of(oget(u, "input_tokens")) or prev.input
  local created = count_of(oget(u, "cache_creation_input_tokens")) or prev.created
  local read = count_of(oget(u, "cache_read_input_tokens")) or prev.read
  local output = count_of(oget(u, "output_tokens")) or prev.output
  return { input = input, created = created, read = read, output = output }
end

local function usage_object(u)
  local prompt = (u.input or 0) + (u.created or 0) + (u.read or 0)
  local completion = u.output or 0
  return obj("prompt_tokens", prompt, "completion_tokens", completion, "total_tokens", prompt + completion,
    "prompt_tokens_details", obj("cached_tokens", u.read or 0)), prompt, completion, prompt + completion
end

local function openai_error(message, etype, code)
  return obj("error", obj("message", message, "type", etype, "param", NULL, "code", code or NULL))
end

-- Anthropic's error types by status: for an error whose body says none (empty, HTML)
local ERROR_TYPES = { [400] = "invalid_request_error", [401] = "authentication_error", [403] = "permission_error",
  [404] = "not_found_error", [413] = "request_too_large", [429] = "rate_limit_error", [529] = "overloaded_error" }

-- An Anthropic error body ({"type":"error","error":{type, message}}) as an OpenAI error body; a
-- body that is not one (empty, not JSON) becomes a generic error naming the status.
function M.error_from_anthropic(s, status)
  local v = M.decode(s)
  local e = oget(v, "error")
  if type(oget(e, "message")) == "string" then
    return M.encode(openai_error(oget(e, "message"), type(oget(e, "type")) == "string" and oget(e, "type") or "api_error"))
  end
  return M.encode(openai_error("llmc: the provider answered " .. tostring(status) .. " without an error message",
    ERROR_TYPES[status] or "api_error"))
end

-- Anthropic's tool-use documentation shows messages without "type": one with no other type and
-- an array `content` or the assistant's role is a message.
local function is_message(msg)
  local mtype = oget(msg, "type")
  if mtype == "message" then return true end
  return mtype == nil and is_obj(msg) and (is_arr(oget(msg, "content")) or oget(msg, "role") == "assistant")
end

-- A 2xx answer that is not a message: a 502 (never an error body under a 2xx).
local function untranslatable(msg, status)
  local e = oget(msg, "error")
  local detail = type(oget(e, "message")) == "string" and (": " .. oget(e, "message")) or ""
  return M.encode(openai_error("llmc: the provider's answer (HTTP " .. tostring(status) ..
    ") is not a message llmc can translate" .. detail, "server_error", "llmc_untranslatable_answer"))
end

-- A non-streamed Messages answer `s` with HTTP `status` -> the OpenAI body, prompt, completion,
-- total tokens and model for accounting (nil when not known), and the status for the client:
-- an error keeps its status; a 2xx that cannot be translated becomes a 502.
function M.from_anthropic(s, status, created)
  if status < 200 or status > 299 then return M.error_from_anthropic(s, status), nil, nil, nil, nil, status end
  local msg = M.decode(s)
  if not is_message(msg) then return untranslatable(msg, status), nil, nil, nil, nil, 502 end
  local texts, calls = {}, arr()
  local content = oget(msg, "content")
  for i = 1, (is_arr(content) and content.n or 0) do
    local block = content[i]
    local btype = oget(block, "type")
    if btype == "text" then
      texts[#texts + 1] = oget(block, "text")
    elseif btype == "tool_use" then
      local input = oget(block, "input")
      apush(calls, obj("id", oget(block, "id"), "type", "function", "function", obj("name", oget(block, "name"),
        "arguments", is_obj(input) and input.s and source_of(input) or "{}")))
    end -- thinking and other blocks have no OpenAI equivalent: dropped
  end
  local message = obj("role", "assistant", "content", #texts > 0 and concat(texts) or NULL,
    "refusal", NULL, "tool_calls", calls.n > 0 and calls or nil)
  local usage, p, c, t = usage_object(usage_from(oget(msg, "usage")))
  local model = oget(msg, "model")
  local out = obj("id", oget(msg, "id"), "object", "chat.completion", "created", created, "model", model,
    "choices", arr({ obj("index", 0, "message", message, "logprobs", NULL,
      "finish_reason", FINISH[oget(msg, "stop_reason")] or "stop") }), "usage", usage)
  return M.encode(out), p, c, t, type(model) == "string" and model or nil, status
end

-- A translated stream's event may be this large (waiting for its end in memory); a larger one
-- ends the stream with an OpenAI error event, never with finish_reason and [DONE] over a gap.
local MAX_TRANSLATED_EVENT = 1048576

-- The translation state of one streamed answer: `feed` takes body chunks and returns the OpenAI
-- events for every complete Anthropic event in them (a partial line waits for the next chunk);
-- afterwards `prompt`, `completion`, `total`, `model` hold the usage for accounting. `failed` is
-- set when an event was over MAX_TRANSLATED_EVENT.
function M.new_anthropic_stream(include_usage, created)
  local st = { id = "", model = "", tools = {}, ntools = 0, usage = {} }

  local function event(delta, finish)
    return "data: " .. M.encode(obj("id", st.id, "object", "chat.completion.chunk", "created", created,
      "model", st.model, "choices", arr({ obj("index", 0, "delta", delta, "logprobs", NULL,
        "finish_reason", finish or NULL) }))) .. "\n\n"
  end

  local function tool_delta(index, fields)
    return event(obj("tool_calls", arr({ obj("index", st.tools[index], unpack(fields)) })))
  end

  local handlers = {}
  function handlers.message_start(ev)
    local msg = oget(ev, "message")
    st.id = type(oget(msg, "id")) == "string" and oget(msg, "id") or ""
    st.model = type(oget(msg, "model")) == "string" and oget(msg, "model") or ""
    st.usage = usage_from(oget(msg, "usage"), st.usage)
    return event(obj("role", "assistant", "content", ""))
  end
  function handlers.content_block_start(ev)
    local block, index = oget(ev, "content_block"), count_of(oget(ev, "index"))
    if oget(block, "type") == "tool_use" and index then
      st.tools[index] = st.ntools
      st.ntools = st.ntools + 1
      return tool_delta(index, { "id", oget(block, "id"), "type", "function",
        "function", obj("name", oget(block, "name"), "arguments", "") })
    elseif oget(block, "type") == "text" and type(oget(block, "text")) == "string" and oget(block, "text") ~= "" then
      return event(obj("content", oget(block, "text")))
    end
    return ""
  end
  function handlers.content_block_delta(ev)
    local delta, index = oget(ev, "delta"), count_of(oget(ev, "index"))
    local dtype = oget(delta, "type")
    if dtype == "text_delta" then return event(obj("content", oget(delta, "text"))) end
    if dtype == "input_json_delta" and index and st.tools[index] then
      return tool_delta(index, { "function", obj("arguments", oget(delta, "partial_json")) })
    end
    return "" -- thinking, signatures, citations: no OpenAI equivalent
  end
  function handlers.message_delta(ev)
    st.usage = usage_from(oget(ev, "usage"), st.usage)
    local reason = oget(oget(ev, "delta"), "stop_reason")
    if type(reason) == "string" then return event(obj(), FINISH[reason] or "stop") end
    return ""
  end
  function handlers.message_stop()
    local out = ""
    if include_usage then
      local usage = usage_object(st.usage)
      out = "data: " .. M.encode(obj("id", st.id, "object", "chat.completion.chunk", "created", created,
        "model", st.model, "choices", arr(), "usage", usage)) .. "\n\n"
    end
    st.done = true
    return out .. "data: [DONE]\n\n"
  end
  function handlers.error(ev)
    local e = oget(ev, "error")
    st.done = true
    return "data: " .. M.encode(openai_error(type(oget(e, "message")) == "string" and oget(e, "message")
      or "llmc: the provider reported an error", type(oget(e, "type")) == "string" and oget(e, "type")
      or "api_error")) .. "\n\n"
  end

  local function on_line(line)
    local ev = M.decode(line)
    local handler = handlers[oget(ev, "type")]
    if handler == nil or st.done then return "" end -- ping, unknown events
    return handler(ev)
  end

  -- the pieces of an unfinished line (a list: a string grown per chunk copies it per chunk)
  local pending, npending = {}, 0

  local function too_large()
    st.done, st.failed, pending, npending = true, true, {}, 0
    return "data: " .. M.encode(openai_error(format("llmc: an event of the provider's stream is over %d MiB, " ..
      "which llmc does not translate; the answer is incomplete", MAX_TRANSLATED_EVENT / 1048576), "server_error",
      "llmc_event_too_large")) .. "\n\n"
  end

  function st.feed(s)
    if st.failed then return "" end
    if not find(s, "\n", 1, true) then
      npending = npending + #s
      if npending > MAX_TRANSLATED_EVENT then return too_large() end
      pending[#pending + 1] = s
      return ""
    end
    local text = s
    if npending > 0 then
      pending[#pending + 1] = s
      text, pending = concat(pending), {}
    end
    local out, start = {}, 1
    while true do
      local nl = find(text, "\n", start, true)
      if not nl then break end
      if nl - start > MAX_TRANSLATED_EVENT then
        out[#out + 1] = too_large()
        return concat(out)
      end
      if byte(text, start) == 100 and sub(text, start, start + 4) == "data:" then
        out[#out + 1] = on_line(sub(text, start + 5, nl - 1))
      end
      start = nl + 1
    end
    npending = #text - start + 1
    if npending > MAX_TRANSLATED_EVENT then
      out[#out + 1] = too_large()
    elseif npending > 0 then
      pending[1] = sub(text, start)
    end
    return concat(out)
  end

  function st.totals()
    if st.usage.input == nil and st.usage.output == nil then return nil end
    local _, p, c, t = usage_object(st.usage)
    return p, c, t, st.model ~= "" and st.model or nil
  end

  return st
end

-- Records what a response said (each value may be nil); nothing found, no call into Envoy.
local function record_usage(h, p, c, t, model)
  if p == nil and c == nil and t == nil and model == nil then return end
  local md = h:streamInfo():dynamicMetadata()
  if model ~= nil then md:set(METADATA_NS, "response_model", model) end
  if p ~= nil then md:set(METADATA_NS, "request_prompt_tokens", p) end
  if c ~= nil then md:set(METADATA_NS, "request_completion_tokens", c) end
  if t ~= nil then md:set(METADATA_NS, "request_total_tokens", t) end
end

-- A stream records what it shows as it passes, not at its end: the official openai client stops
-- reading at `data: [DONE]` and closes the connection, and a provider's stream may end after that
-- event; Envoy then resets the stream and code after the chunk loop never runs. `seen` holds what
-- was recorded (values are never unset, see M.new_usage); only values that changed are written: an
-- OpenAI stream writes its model with the first event and its usage with the last; a provider that
-- sends usage in every event (vLLM's continuous_usage_stats) costs the changed counts per event.
-- record_usage fetches the metadata object each time: one kept across a yield (the next chunk) is
-- dead in Envoy, and writing to it fails (tests/test_observability_e2e.py fails if it is kept).
local function record_news(h, seen, p, c, t, model)
  if p == seen.p and c == seen.c and t == seen.t and model == seen.model then return end
  record_usage(h, p ~= seen.p and p or nil, c ~= seen.c and c or nil, t ~= seen.t and t or nil,
    model ~= seen.model and model or nil)
  seen.p, seen.c, seen.t, seen.model = p or seen.p, c or seen.c, t or seen.t, model or seen.model
end

-- A compressed answer despite `accept-encoding: identity` cannot be read (no zlib in Envoy's Lua):
-- an OpenAI error without content-encoding, 502 or the error's own status (README, "Answers llmc
-- cannot translate").
local function compressed_answer(h, headers, status, encoding, sse)
  local answer = status >= 400 and status or 502
  local etype = status >= 400 and (ERROR_TYPES[status] or "api_error") or "server_error"
  local err = M.encode(openai_error("llmc: the provider answered " .. tostring(status) .. " compressed " ..
    "(content-encoding: " .. encoding .. "), which llmc cannot translate", etype, "llmc_compressed_answer"))
  h:logWarn("llmc: the provider answered with content-encoding " .. encoding .. " although asked for identity")
  headers:remove("content-encoding")
  headers:replace("content-type", "application/json")
  headers:replace(":status", tostring(answer))
  if not sse then
    h:body(true):setBytes(err) -- wrapped even when empty; setBytes fixes Content-Length
    return
  end
  -- a stream is not buffered: its first chunk becomes the error, the rest nothing
  headers:remove("content-length")
  local sent = false
  for chunk in h:bodyChunks() do
    if not sent then
      chunk:setBytes(err)
      sent = true
    elseif chunk:length() > 0 then
      chunk:setBytes("")
    end
  end
end

-- Runs instead of the usage reader when the request was translated (`note`, from M.shape through
-- dynamic metadata). A stream is rewritten event by event as its chunks pass: Content-Length is
-- dropped first (the length changes; Envoy sends the answer chunked), then every chunk's bytes are
-- replaced by the OpenAI events of the Anthropic events it completes (tests/test_anthropic_e2e.py
-- proves this on Envoy 1.37-1.39; README, "Providers", has the fallback). Any other answer is a
-- JSON body, small (one message, or an error): read whole with body(true) (wrapped even when
-- empty, so an empty 529 gets a body), translated, replaced; an untranslatable 2xx becomes 502.
function M.on_translated_response(h, note)
  local headers = h:headers()
  local status = tonumber(headers:get(":status")) or 502
  local sse = find(headers:get("content-type") or "", "text/event-stream", 1, true) ~= nil
  local encoding = headers:get("content-encoding")
  if encoding ~= nil and encoding:lower() ~= "identity" then
    return compressed_answer(h, headers, status, encoding, sse)
  end
  local created = os.time()
  if sse and status == 200 then
    headers:remove("content-length")
    local st = M.new_anthropic_stream(note == "anthropic+usage", created)
    local seen, usage = {}, st.usage
    for chunk in h:bodyChunks() do
      local n = chunk:length()
      if n > 0 and not st.failed then
        chunk:setBytes(st.feed(chunk:getBytes(0, n)))
        -- message_start and message_delta replace the usage table; recorded then (record_news)
        if st.usage ~= usage then
          usage = st.usage
          record_news(h, seen, st.totals())
        end
        if st.failed then h:logWarn("llmc: a stream event over the translation limit ended the stream") end
      elseif n > 0 then
        chunk:setBytes("") -- nothing after the error event
      end
    end
    return
  end
  headers:replace("content-type", "application/json")
  local body = h:body(true)
  local n = body:length()
  local out, p, c, t, model, answer = M.from_anthropic(n > 0 and body:getBytes(0, n) or "", status, created)
  body:setBytes(out)
  if answer ~= status then h:headers():replace(":status", tostring(answer)) end
  record_usage(h, p, c, t, model)
end

-- What an OpenAI-protocol response can hold usage in: "sse", "json", or nil — not a 2xx, or a
-- content type that is neither JSON nor an event stream (a missing one is read as JSON). Such a
-- response passes without its body being touched.
local function media(ctype)
  if find(ctype, "text/event-stream", 1, true) then return "sse" end
  if find(ctype, "json", 1, true) then return "json" end
  return nil
end

function M.readable(status, ctype)
  if status == nil or byte(status, 1) ~= 50 or #status ~= 3 then return nil end
  if ctype == nil then return "json" end
  -- media types are case-insensitive (RFC 9110); lower-case ones, the usual, need no copy
  return media(ctype) or media(ctype:lower())
end

-- An error status without a JSON body -- Envoy's own reply when the provider reset the connection
-- or timed out (text/plain "upstream connect error ..."), a proxy's HTML page, an empty 503 --
-- becomes an OpenAI-format error with the same status, so the client's SDK can read it. Only
-- error answers get here (2xx ones are `readable`): the usual path costs nothing.
local function error_response(h, headers, status)
  local code = tonumber(status or "")
  if code == nil or code < 400 then return end
  local ctype = headers:get("content-type")
  if ctype ~= nil and (media(ctype) or media(ctype:lower())) == "json" then return end
  local body = h:body(true) -- a wrapper even when the answer has no body
  local n = body:length()
  local detail = n > 0 and body:getBytes(0, math.min(n, 200)):gsub("[^\32-\126]+", " ") or ""
  body:setBytes('{"error":{"message":' .. encode_string("llmc: the provider answered " .. code ..
    " without an OpenAI error" .. (detail ~= "" and (" (" .. detail .. ")") or "")) .. ',"type":"' ..
    (code >= 500 and "server_error" or "invalid_request_error") .. '","param":null,"code":"upstream_error"}}')
  headers = h:headers()
  headers:replace("content-type", "application/json")
  headers:remove("content-encoding")
end

-- Runs only on llmc's virtual hosts (the filter has no default script), and not for the replies
-- this filter sent itself; a request it did not shape never reaches a provider.
function M.on_response(h, headers)
  if headers:get(TRANSLATE_HEADER) ~= nil then
    -- The route's mark, never the client's business; the request's own note decides (a provider
    -- cannot fake one: the route overwrites the header, and the note comes from M.shape).
    headers:remove(TRANSLATE_HEADER)
    local shaped = h:streamInfo():dynamicMetadata():get(METADATA_NS)
    local note = shaped and shaped.translate
    if note == "openai+usage" then return M.on_usage_asked_response(h, headers) end
    if note ~= nil then return M.on_translated_response(h, note) end
  end
  local status = headers:get(":status")
  local kind = M.readable(status, headers:get("content-type"))
  if kind == nil then return error_response(h, headers, status) end
  if kind == "json" then
    -- A small JSON answer (a completion) is read whole: body() yields once, where bodyChunks()
    -- yields per chunk and wraps each. Small means under the route's body buffer limit, which
    -- applies to responses too and is never below MAX_BUFFERED_RESPONSE (compiler: maxRequestBytes
    -- >= 1 KiB plus >= 64 KiB of headroom); an answer without Content-Length streams as before.
    local len = tonumber(headers:get("content-length") or "")
    if len ~= nil and len <= MAX_BUFFERED_RESPONSE then
      local body = h:body()
      local n = body and body:length() or 0
      if n > 0 then record_usage(h, M.usage_of(body:getBytes(0, n))) end
      return
    end
  end
  local u = M.new_usage(kind == "sse")
  if kind == "sse" then
    local seen = {}
    for chunk in h:bodyChunks() do
      local n = chunk:length()
      if n > 0 then
        u.feed(chunk:getBytes(0, n))
        record_news(h, seen, u.prompt, u.completion, u.total, u.model)
      end
    end
    return
  end
  for chunk in h:bodyChunks() do
    local n = chunk:length()
    if n > 0 then u.feed(chunk:getBytes(0, n)) end
  end
  record_usage(h, u.finish())
end

-- Token limits: the events of a stream for which llmc asked usage the client did not ask for. Every
-- event passes as it came except the usage event (no choices, a usage object), which is dropped; an
-- event without choices and without usage (Azure's prompt_filter_results) passes. An event split
-- across chunks waits for its end ("\n\n"). `feed` returns the bytes to send on.
function M.new_usage_dropper()
  local d = { pending = "" }
  function d.feed(s)
    local text = d.pending .. s
    local out, start = {}, 1
    while true do
      local stop = find(text, "\n\n", start, true)
      if not stop then break end
      local event = sub(text, start, stop + 1)
      if not (find(event, '"usage"%s*:%s*{') and find(event, '"choices"%s*:%s*%[%s*%]')) then
        out[#out + 1] = event
      end
      start = stop + 2
    end
    d.pending = sub(text, start)
    if #d.pending > MAX_SSE_LINE then -- not an event stream we understand: pass it on
      out[#out + 1], d.pending = d.pending, ""
    end
    return concat(out)
  end
  return d
end

-- The response of a stream llmc asked usage for (M.shape's note "openai+usage"): usage recorded
-- as usual, the usage event dropped. Any other answer (an error, JSON) is read as usual.
function M.on_usage_asked_response(h, headers)
  local status = headers:get(":status")
  if M.readable(status, headers:get("content-type")) ~= "sse" then return M.on_response(h, headers) end
  local u, d, seen = M.new_usage(true), M.new_usage_dropper(), {}
  for chunk in h:bodyChunks() do
    local n = chunk:length()
    if n > 0 then
      local bytes = chunk:getBytes(0, n)
      u.feed(bytes)
      record_news(h, seen, u.prompt, u.completion, u.total, u.model)
      local out = d.feed(bytes)
      if out ~= bytes then chunk:setBytes(out) end
    end
  end
end

---------------------------------------------------------------------------------------------------
-- Failover (Istio >= 1.31, Envoy >= 1.39): retries that move to another provider
---------------------------------------------------------------------------------------------------
-- A failover rule routes through pinned routes like a weighted one, but the pinned route sends to
-- every backend of the rule as weighted clusters in failover order, with `refresh_cluster_on_retry`
-- and the random value taken from the internal header x-llmc-order, set to "0": the first try goes
-- to the first cluster (the backend this filter picked by weight among the first priority), and
-- each retry to the next cluster not tried yet (Envoy zeroes the weight of tried clusters). Those
-- route fields come from an EnvoyFilter patch pinned to Istio >= 1.31 proxies, which also marks
-- the route (metadata `failover: true`); a proxy without that patch gets an error, never a request
-- that could reach a provider other than the one it was shaped for.
--
-- This (downstream) filter runs once per request, so here it only validates the request, picks the
-- first backend and pins the route; it does not shape anything. Each try is shaped by the upstream
-- filter of the provider's cluster (same file, entry point M.on_attempt below, selected by its
-- filter context), from the original client body, which Envoy keeps for retries.

local ANSWERED_BY = "x-llmc-answered-by" -- response header: upstream filter -> this filter

function M.failover_unsupported(h, cfg)
  h:logErr("llmc: rule " .. cfg.rule_id .. " needs failover, which this proxy was not configured for")
  return reply(h, 503, "server_error", "failover_unsupported",
    "llmc: this rule fails over between providers, which needs Istio 1.31 or newer on this proxy; " ..
    "nothing was sent", cfg)
end

function M.failover_request(h, vh, cfg, b, headers)
  local declared = tonumber(headers:get("content-length") or "")
  if declared and declared > b.max_body then return too_large(h, cfg, b, b.max_body) end
  local original_path = headers:get(":path")
  local body, s = read_body(h, cfg, b, b.max_body)
  if body == nil then return end
  return M.failover_accept(h, cfg, b, s, nil, nil, original_path)
end

-- A failover request whose route was checked: the endpoint and the body are validated once here
-- (each try shapes the same body; the result is not kept) and the request recorded for the access
-- log. Every provider of a failover rule sets basePath or none (LLMC235), so the first choice's
-- endpoint is every try's. What each try needs of the client's request and the header map no longer
-- holds once a try changed it -- the client's path, the model that routed it -- goes into the
-- stream's dynamic metadata, which the upstream filter reads (Envoy hands upstream filters the
-- downstream stream info).
function M.failover_accept(h, cfg, b, s, model_json, scanned, original_path)
  local endpoint = endpoint_for(b, original_path)
  if endpoint == nil then return unknown_endpoint(h, cfg, b, original_path) end
  local out, err, param = body_for(endpoint, s, b, model_json, scanned)
  if out == nil then
    return reply(h, 400, "invalid_request_error", "invalid_json", "llmc: " .. err, cfg, b, param)
  end
  local md = h:streamInfo():dynamicMetadata()
  md:set(METADATA_NS, "rule", cfg.rule_id)
  md:set(METADATA_NS, "first_provider", b.provider)
  md:set(METADATA_NS, "failover", true)
  md:set(METADATA_NS, "client_path", original_path or "/")
  if model_json ~= nil then md:set(METADATA_NS, "routed_model", model_json) end
end

-- The upstream filter's context: one backend (the provider of this cluster), the protocols, and
-- every credential header any protocol uses. Prepared once per id and worker (load_context).
prepare_attempt = function(ctx)
  local attempt = ctx:get("attempt")
  local rule = prepare_rule(ctx:get("route"), ctx:get("rule"), { backends = { attempt } }, ctx:get("protocols"))
  return { attempt = true, b = rule.backends[1], rule_id = rule.rule_id, host = attempt.authority,
    credential_headers = ctx:get("credential_headers"), internal_headers = ctx:get("internal_headers") }
end

-- One try, in the upstream filter of the provider's cluster: shapes the original client body and
-- the headers for this provider, through the same steps as the request path (endpoint_for,
-- body_for, M.request_headers). The header map is shared by all tries and keeps what an earlier
-- try set, so everything a try depends on is set or removed here: every credential header any
-- backend of the rule uses (a key set for another provider by an earlier try never reaches this
-- one; the client's own never passes on a failover rule), the internal headers, the path (from the
-- client's, kept in the dynamic metadata), Content-Length (Envoy keeps the client's body for each
-- try, but the length an earlier try's setBytes wrote stays in the map), and Host. `a` is the
-- prepared context (prepare_attempt).
function M.on_attempt(h, a)
  local b = a.b
  local headers = h:headers()
  for i = 1, #a.credential_headers do headers:remove(a.credential_headers[i]) end
  for i = 1, #a.internal_headers do headers:remove(a.internal_headers[i]) end
  local key = credential(b)
  if key == false then
    h:logErr("llmc: API key file for provider " .. b.provider .. " is missing or empty")
    key = nil -- sent without a key: the provider refuses it, and the next try moves on
  end
  local mine = h:streamInfo():dynamicMetadata():get(METADATA_NS) or {}
  local original_path = mine.client_path or headers:get(":path")
  local endpoint = endpoint_for(b, original_path) or "chat" -- validated by the downstream filter
  local path = b.path
  if endpoint ~= "chat" then path = b.base_path .. "/" .. endpoint .. b.base_query end
  local body = h:body()
  local s = body:getBytes(0, body:length())
  local out = body_for(endpoint, s, b, mine.routed_model) or s -- validated by the downstream filter
  if out ~= s then body:setBytes(out) end
  headers = h:headers()
  local set = M.request_headers(b, key, original_path, path)
  for i = 1, #set do
    local v = set[i][2]
    if v then headers:replace(set[i][1], v) else headers:remove(set[i][1]) end
  end
  headers:replace("content-length", tostring(#out))
  -- the try's Host (its hostRewrite): Envoy applies a weighted cluster's host rewrite to the first try only
  headers:replace(":authority", a.host)
end

function M.on_attempt_response(h)
  local a = load_context(h)
  if a ~= nil and a.attempt then h:headers():replace(ANSWERED_BY, a.b.provider) end
end

-- Downstream, on a failover request's response (its route added FAILOVER_HEADER, which the caller
-- removed): the provider that answered (from the upstream filter's header, which the client never
-- sees) goes into the access log as llmc:provider. No such header means Envoy answered itself
-- (every try reset or timed out; the route's response headers apply to the router's own replies
-- too): the client gets that error in OpenAI's format. Returns true when it replaced the response.
function M.failover_response(h, headers)
  local md = h:streamInfo():dynamicMetadata()
  local mine = md:get(METADATA_NS)
  if mine == nil or mine.failover ~= true then return false end
  local by = headers:get(ANSWERED_BY)
  if by ~= nil then
    headers:remove(ANSWERED_BY)
    md:set(METADATA_NS, "provider", by)
    if by ~= mine.first_provider then
      -- stat http.<listener>.lua.llmc.failovers.<rule>.<provider>: requests a backup answered
      h:stats():counter("failovers." .. (mine.rule or ""):gsub("[^%w_-]", "_") .. "." .. by):add(1)
    end
    return false
  end
  local status = tonumber(headers:get(":status") or "") or 502
  if status < 400 then return false end
  local body = h:body()
  local detail = body and body:length() > 0 and body:getBytes(0, body:length()) or ""
  body:setBytes('{"error":{"message":' .. encode_string("llmc: no provider answered (" .. detail .. ")") ..
    ',"type":"server_error","param":null,"code":"upstream_unavailable"}}')
  headers = h:headers()
  headers:replace("content-type", "application/json")
  return true
end

-- The upstream filter (failover) and this filter run the same file, in VMs of their own
-- (`upstream_vm`). Downstream, only the routes of failover rules add FAILOVER_HEADER; every other
-- response goes straight to the usage reader, with no call into Envoy before the headers.
local function on_response(h)
  if upstream_vm then return M.on_attempt_response(h) end
  local headers = h:headers()
  if headers:get(FAILOVER_HEADER) ~= nil then
    headers:remove(FAILOVER_HEADER) -- the route's mark, never the client's business
    if M.failover_response(h, headers) then return end
  end
  return M.on_response(h, headers)
end

function envoy_on_response(h)
  local ok, err = pcall(on_response, h)
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
