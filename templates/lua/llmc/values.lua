-- llmc.values: the JSON value tree of translated protocols (decode, encode, and the constructors
-- translators build their bodies with), over text llmc.scanner validated.

local scanner = require("llmc.scanner")

local byte, sub, format, concat = string.byte, string.sub, string.format, table.concat
local floor = math.floor
local reset_scan, skip_ws, skip_string, skip_number, skip_value = scanner.reset, scanner.skip_ws,
  scanner.skip_string, scanner.skip_number, scanner.skip_value
local decode_string, encode_string = scanner.decode_string, scanner.encode_string

local M = {}

-- The OpenAI path (llmc.scanner) never decodes: it splices. Translation needs values, so this decodes a
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
local function decode(s)
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
  elseif t == "number" then -- computed by llmc: token counts, indexes, timestamps
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
local function encode(v)
  local out = {}
  encode_into(v, out)
  return concat(out)
end

-- Error types by HTTP status, for an error answer whose body names none (empty, HTML, compressed):
-- the names OpenAI's and Anthropic's APIs use.
M.ERROR_TYPES = { [400] = "invalid_request_error", [401] = "authentication_error", [403] = "permission_error",
  [404] = "not_found_error", [413] = "request_too_large", [429] = "rate_limit_error", [529] = "overloaded_error" }

-- An OpenAI error body's value ({"error": {message, type, param: null, code}}).
local function openai_error(message, etype, code)
  return obj("error", obj("message", message, "type", etype, "param", NULL, "code", code or NULL))
end

M.NUM = NUM
M.is_obj, M.is_arr, M.oget, M.oset, M.obj, M.arr, M.apush, M.raw = is_obj, is_arr, oget, oset, obj, arr, apush, raw
M.present, M.source_of, M.decode, M.encode, M.openai_error = present, source_of, decode, encode, openai_error

return M
