-- llmc.usage: token usage read from OpenAI-protocol responses as their bodies pass (small JSON
-- answers whole, streams event by event), and recorded in the stream's dynamic metadata (the
-- access log's and the token limits' source). Also the dropper of the usage event llmc asked for.

local scanner = require("llmc.scanner")
local context = require("llmc.context")

local byte, sub, find, concat = string.byte, string.sub, string.find, table.concat
local scan_object, decode_string = scanner.scan_object, scanner.decode_string
local METADATA_NS = context.METADATA_NS

local M = {}

local MAX_JSON_SCAN = 1048576 -- a non-streaming response larger than this is passed, not read
local MAX_SSE_LINE = 262144 -- an SSE line longer than this is not read

local function count(text, name)
  local v = text:match('"' .. name .. '"%s*:%s*(%d+)[%s,}]')
  return v and tonumber(v)
end

-- Usage and model from a JSON object's text: prompt, completion, total (numbers or nil), model.
local function usage_of(s)
  local members = scan_object(s)
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

M.usage_of = usage_of

-- The accounting state of one response; `feed` takes body chunks, `finish` returns the usage. Of a
-- stream's events the first model counts, and each usage field keeps the last value an event gave
-- it (a later usage object without a field does not erase it: what was recorded stays recorded).
function M.new_usage(sse)
  local u = { sse = sse, parts = {}, size = 0, carry = "" }

  local function take(json)
    local p, c, t, model = usage_of(json)
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
function M.record_news(h, seen, p, c, t, model)
  if p == seen.p and c == seen.c and t == seen.t and model == seen.model then return end
  record_usage(h, p ~= seen.p and p or nil, c ~= seen.c and c or nil, t ~= seen.t and t or nil,
    model ~= seen.model and model or nil)
  seen.p, seen.c, seen.t, seen.model = p or seen.p, c or seen.c, t or seen.t, model or seen.model
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

M.record_usage, M.media = record_usage, media

return M
