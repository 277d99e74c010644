-- llmc.usage: token usage read from OpenAI-protocol responses as their bodies pass (small JSON
-- answers whole, streams event by event), and recorded in the stream's dynamic metadata (the
-- access log's and the token limits' source). Also the dropper of the usage event llmc asked for.

local scanner = require("llmc.scanner")
local context = require("llmc.context")

local byte, sub, find, match, concat = string.byte, string.sub, string.find, string.match, table.concat
local scan_object, decode_string = scanner.scan_object, scanner.decode_string
local METADATA_NS = context.METADATA_NS

local M = {}

local MAX_JSON_SCAN = 1048576 -- a non-streaming response larger than this is passed, not read
local MAX_SSE_LINE = 262144 -- an SSE line longer than this is not read

local function count(text, name)
  local v = text:match('"' .. name .. '"%s*:%s*(%d+)[%s,}]')
  return v and tonumber(v)
end

-- Each finish_reason in s[from..to] that is a string, in order, appended to `out` (created when
-- the first is found; nil when none). Plain find jumps to each member name: inside a string its
-- quotes are escaped (\"finish_reason\"), so the quoted name is never found in content.
local function finish_reasons(s, from, to, out)
  local pos = from
  while true do
    local i = find(s, '"finish_reason"', pos, true)
    if not i or i > to then return out end
    local reason = match(s, '^%s*:%s*"([^"\\]*)"', i + 15)
    if reason ~= nil then
      out = out or {}
      out[#out + 1] = reason
    end
    pos = i + 15
  end
end

-- Usage, model and what else a response says, from a JSON object's text: prompt, completion,
-- total (numbers or nil), model, and `x`: nil, or a table of what was found of cache_read
-- (usage.prompt_tokens_details.cached_tokens), reasoning (usage.completion_tokens_details.
-- reasoning_tokens) and, with `with_finish`, finish_reasons (each choice's, in order). The details
-- are looked for only when the usage has a *_details member (one plain find otherwise).
local function usage_of(s, with_finish)
  local members = scan_object(s)
  if not members then return nil end
  local p, c, t, model, x
  for i = 1, #members do
    local m = members[i]
    if m[1] == "usage" and byte(s, m[2]) == 123 then
      local u = sub(s, m[2], m[3] - 1)
      p, c, t = count(u, "prompt_tokens"), count(u, "completion_tokens"), count(u, "total_tokens")
      if find(u, "_details", 1, true) then
        local read, reasoning = count(u, "cached_tokens"), count(u, "reasoning_tokens")
        if read ~= nil or reasoning ~= nil then
          x = x or {}
          x.cache_read, x.reasoning = read, reasoning
        end
      end
    elseif m[1] == "model" and byte(s, m[2]) == 34 and m[3] - m[2] > 2 then
      -- "" is no model (Azure's first streamed chunk): the first non-empty one counts
      model = decode_string(sub(s, m[2] + 1, m[3] - 2))
    elseif with_finish and m[1] == "choices" and byte(s, m[2]) == 91 then
      local reasons = finish_reasons(s, m[2], m[3] - 1)
      if reasons ~= nil then
        x = x or {}
        x.finish_reasons = reasons
      end
    end
  end
  return p, c, t, model, x
end

M.usage_of, M.finish_reasons = usage_of, finish_reasons

-- The accounting state of one response; `feed` takes body chunks, `finish` returns the usage. Of a
-- stream's events the first model counts, and each usage field keeps the last value an event gave
-- it (a later usage object without a field does not erase it: what was recorded stays recorded).
-- A stream's finish reasons are collected from every event as they pass (a choice's last event
-- has its finish_reason; the usage event has no choices); the state is also the `x` of record_usage.
function M.new_usage(sse)
  local u = { sse = sse, parts = {}, size = 0, carry = "" }

  local function take(json, with_finish)
    local p, c, t, model, x = usage_of(json, with_finish)
    if model ~= nil and u.model == nil then u.model = model end
    u.prompt, u.completion, u.total = p or u.prompt, c or u.completion, t or u.total
    if x ~= nil then
      u.cache_read, u.reasoning = x.cache_read or u.cache_read, x.reasoning or u.reasoning
      u.finish_reasons = x.finish_reasons or u.finish_reasons
    end
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
        local f = find(line, '"finish_reason"', 1, true)
        if f then u.finish_reasons = finish_reasons(line, f, #line, u.finish_reasons) end
      end
      start = nl + 1
    end
    u.carry = sub(text, start)
    if #u.carry > MAX_SSE_LINE then u.carry = "" end
  end

  function u.finish()
    if not u.sse and u.size <= MAX_JSON_SCAN and u.size > 0 then take(concat(u.parts), true) end
    return u.prompt, u.completion, u.total, u.model, u
  end

  return u
end

-- Records what a response said (each value may be nil; `x` as usage_of's, or nil); nothing found,
-- no call into Envoy. The details keep their own keys: the convention's cache and reasoning
-- counts and the finish reasons (a list) are new keys beside the seed system's.
local function record_usage(h, p, c, t, model, x)
  if p == nil and c == nil and t == nil and model == nil and x == nil then return end
  local md = h:streamInfo():dynamicMetadata()
  if model ~= nil then md:set(METADATA_NS, "response_model", model) end
  if p ~= nil then md:set(METADATA_NS, "request_prompt_tokens", p) end
  if c ~= nil then md:set(METADATA_NS, "request_completion_tokens", c) end
  if t ~= nil then md:set(METADATA_NS, "request_total_tokens", t) end
  if x == nil then return end
  if x.cache_read ~= nil then md:set(METADATA_NS, "cache_read_tokens", x.cache_read) end
  if x.cache_creation ~= nil then md:set(METADATA_NS, "cache_creation_tokens", x.cache_creation) end
  if x.reasoning ~= nil then md:set(METADATA_NS, "reasoning_tokens", x.reasoning) end
  if x.finish_reasons ~= nil then md:set(METADATA_NS, "finish_reasons", x.finish_reasons) end
end

-- A stream records what it shows as it passes, not at its end: the official openai client stops
-- reading at `data: [DONE]` and closes the connection, and a provider's stream may end after that
-- event; Envoy then resets the stream and code after the chunk loop never runs. `seen` holds what
-- was recorded (values are never unset, see M.new_usage); only values that changed are written: an
-- OpenAI stream writes its model with the first event and its usage with the last; a provider that
-- sends usage in every event (vLLM's continuous_usage_stats) costs the changed counts per event.
-- record_usage fetches the metadata object each time: one kept across a yield (the next chunk) is
-- dead in Envoy, and writing to it fails (tests/test_observability_e2e.py fails if it is kept).
-- `x` (the usage state, or a translator's) adds the details; finish reasons only grow.
local DETAILS = { "cache_read", "cache_creation", "reasoning" }

function M.record_news(h, seen, p, c, t, model, x)
  local news
  if x ~= nil then
    for i = 1, #DETAILS do
      local k = DETAILS[i]
      local v = x[k]
      if v ~= nil and v ~= seen[k] then
        news = news or {}
        news[k], seen[k] = v, v
      end
    end
    local reasons = x.finish_reasons
    if reasons ~= nil and #reasons ~= seen.nreasons then
      news = news or {}
      news.finish_reasons, seen.nreasons = reasons, #reasons
    end
  end
  if news == nil and p == seen.p and c == seen.c and t == seen.t and model == seen.model then return end
  record_usage(h, p ~= seen.p and p or nil, c ~= seen.c and c or nil, t ~= seen.t and t or nil,
    model ~= seen.model and model or nil, news)
  seen.p, seen.c, seen.t, seen.model = p or seen.p, c or seen.c, t or seen.t, model or seen.model
end

-- A stream's first body chunk: when it passed, in milliseconds since the epoch (Envoy's clock, the
-- one of the request's start time), for gen_ai.response.time_to_first_chunk: the access log and the
-- metric subtract the start (CEL), so this costs one call per stream and nothing per chunk.
function M.first_chunk(h)
  h:streamInfo():dynamicMetadata():set(METADATA_NS, "first_chunk_ms", h:timestamp())
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
