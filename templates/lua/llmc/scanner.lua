-- llmc.scanner: the hot path. A validating JSON scanner for request bodies and the splice that
-- rewrites top-level members in place (M.rewrite), and the OpenAI shaping of a chat request (M.shape).
--
-- Envoy ships no JSON library, so this module checks the whole body is valid JSON, finds the
-- top-level members, and splices new values for `model` and `stream` into the original text. Every
-- other byte of the client's JSON is preserved as sent (escapes, number formats, key order, nested
-- objects). It stays one module: everything on the per-request path is a local (an upvalue) here,
-- never a field of another module's table (docs/performance.md, "Lua as modules").
--
-- Also exported for llmc.values (the JSON value tree of translated protocols), which walks text this
-- scanner validated: reset, skip_ws, skip_string, skip_number, skip_value.

local byte, sub, find, format, concat, char = string.byte, string.sub, string.find, string.format,
  table.concat, string.char
local floor = math.floor

local MAX_DEPTH = 128

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
local function scan_object(s)
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

M.scan_object = scan_object

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
local function rewrite(s, fields, members, close)
  if members == nil then
    members, close = scan_object(s)
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

M.rewrite = rewrite

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

-- The request body for an OpenAI-protocol backend `b` (see README, "What the data plane does"): the configured model
-- replaces the client's (`client_model_json`, when given, stands in for an unconfigured one;
-- `scanned` is {members, close} when the caller already scanned `s`); the client's explicit `stream` wins over the configured one, which
-- applies when the client says nothing; `stream_options` is dropped when the request does not
-- stream (OpenAI-compatible servers reject it then) and, when llmc turned streaming on, asks for
-- usage unless the client chose. Returns the new text, or nil, message and the offending field.
function M.shape(s, b, client_model_json, scanned)
  local members, close
  if scanned ~= nil then
    members, close = scanned[1], scanned[2]
  else
    members, close = scan_object(s)
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
      local out, err, param = rewrite(s, fields, members, close)
      return out, err, param, out ~= nil and "openai+usage" or nil
    end
  end
  return rewrite(s, fields, members, close)
end

---------------------------------------------------------------------------------------------------
-- Per-virtual-host configuration
---------------------------------------------------------------------------------------------------

-- Prepares one rule: its backends with pre-encoded body fields, cumulative weights, and the

M.reset, M.skip_ws, M.skip_string, M.skip_number, M.skip_value = reset_scan, skip_ws, skip_string, skip_number,
  skip_value

return M
