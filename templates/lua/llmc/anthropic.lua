-- llmc.anthropic: the translator between OpenAI chat completions and Anthropic Messages.
--
-- THE TRANSLATOR CONTRACT. A translated protocol is one module, llmc.<format> (<format> is the
-- `format` of the protocol's record, its driver in compiler/protocols/), returning a table of four functions.
-- llmc.request's TRANSLATORS[format] finds it; nothing else in the Lua names a protocol. All four
-- are pure (no Envoy handle); bad input gives values, never a raise (a raise is llmc's bug:
-- envoy_on_request answers it 500, envoy_on_response logs it).
--
--   request(s, b) -> text, nil, nil, note[, path]  |  nil, message, param
--     `s`: the client's OpenAI chat request body (text, not yet validated); `b`: the prepared backend
--     (llmc.context: model, max_tokens, headers, ...). Returns the provider's request body and the
--     note the response path gets back: "<format>", or "<format>+usage" when a streaming client
--     asked for usage (stream_options.include_usage); optionally the request path, when the
--     protocol's path depends on the request (Gemini: the model, and the stream method), which the
--     request step (llmc.request, prepare) then uses instead of b.path. Refused: nil, a message for
--     the client (400 invalid_request_error, prefixed "llmc: " by the caller) and the offending
--     field (or nil).
--   response(s, status, created) -> body, prompt, completion, total, model, status, x
--     A non-streamed answer `s` with HTTP `status` -> the OpenAI body; token counts and the model
--     for accounting (nil when not known); the status for the client (an error keeps its own; a 2xx
--     that is not an answer becomes 502); `x`: the details for accounting, nil or a table of
--     cache_read, cache_creation, reasoning (token counts) and finish_reasons (a list of the
--     provider's own reasons), as llmc.usage records them. `created`: the Unix time for `created`.
--   stream(include_usage, created) -> st
--     The state of one streamed (200, text/event-stream) answer: st.feed(chunk) -> the OpenAI SSE
--     events of every event the chunk completes ("" while a line is incomplete); st.totals() ->
--     prompt, completion, total, model, x (nil before any usage); st.usage: a table replaced, never
--     changed in place, whenever the usage changes (the response path records then); st.failed:
--     true once the stream ended with an error event (nothing may follow it). include_usage: end
--     with OpenAI's usage event (no choices) before [DONE].
--   error(s, status) -> body
--     An error answer (JSON, HTML, empty, ...) with HTTP `status` -> an OpenAI error body.
--
-- Anthropic's specifics: docs/protocols.md.

local values = require("llmc.values")
local chat = require("llmc.chat")

local sub = string.sub
local NULL, present = values.NULL, values.present
local is_obj, is_arr, oget, oset, obj, arr, apush, raw = values.is_obj, values.is_arr, values.oget, values.oset,
  values.obj, values.arr, values.apush, values.raw
local source_of, decode, encode = values.source_of, values.decode, values.encode
local count_of, image_url, chunk, feeder, text_or = chat.count_of, chat.image_url, chat.chunk, chat.feeder,
  chat.text_or

-- OpenAI chat request -> Messages request

local UNSUPPORTED = chat.UNSUPPORTED

-- Request fields that would change the shape of the answer and have no Messages equivalent: the
-- request is refused (400) rather than answered differently (llmc.chat refuses those no
-- translated protocol maps; this, run among them, Anthropic's own). Every other field without a
-- mapping is tuning only and dropped (README, "Providers").
local function refused(req)
  local rf = oget(req, "response_format")
  if rf ~= nil and rf ~= NULL and oget(rf, "type") ~= "text" then
    return "response_format", "'response_format' other than text" .. UNSUPPORTED
  end
  return nil
end

local IMAGE_TYPES = { ["image/jpeg"] = true, ["image/png"] = true, ["image/gif"] = true, ["image/webp"] = true }

local function image_block(part)
  local url, mt, data = image_url(part)
  if not url then return nil, mt end
  if mt then
    if not IMAGE_TYPES[mt] then return nil, "image type " .. mt .. UNSUPPORTED end
    return obj("type", "image", "source", obj("type", "base64", "media_type", mt, "data", data))
  end
  if sub(url, 1, 8):lower() == "https://" then return obj("type", "image", "source", obj("type", "url", "url", url)) end
  return nil, "an image URL must be https:// or a base64 data: URL"
end

local function text_block(text)
  return obj("type", "text", "text", text)
end

-- Content blocks of a message's `content`: llmc.chat's content with text blocks (and images in a
-- user's message).
local content_blocks = chat.content

local function tool_use_block(id, name, input)
  return obj("type", "tool_use", "id", id, "name", name, "input", input.s and raw(source_of(input)) or input)
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
      blocks, err = content_blocks(oget(m, "content"), system, text_block)
      if not blocks then return nil, nil, err end
    else
      if role == "user" then
        blocks, err = content_blocks(oget(m, "content"), arr(), text_block, image_block)
      elseif role == "assistant" then
        blocks, err = content_blocks(oget(m, "content"), arr(), text_block)
        if blocks then blocks, err = chat.tool_calls(oget(m, "tool_calls"), blocks, tool_use_block) end
      elseif role == "tool" then
        local id = oget(m, "tool_call_id")
        if type(id) ~= "string" then return nil, nil, "a tool message needs tool_call_id" end
        local inner
        inner, err = content_blocks(oget(m, "content"), arr(), text_block)
        if inner then -- an empty result: no content (Anthropic's is optional; empty texts are refused)
          blocks = arr({ obj("type", "tool_result", "tool_use_id", id, "content", inner.n > 0 and inner or nil) })
        end
        role = "user"
      else
        return nil, nil, "message role " .. tostring(role) .. UNSUPPORTED
      end
      if not blocks then return nil, nil, err end
      -- no blocks: nothing to say (an empty turn), and Anthropic refuses empty content
      if blocks.n > 0 then chat.append(out, role, "content", blocks) end
    end
  end
  return system, out
end

local TOOL_CHOICE = { none = "none", auto = "auto", required = "any" }

local function declare(fn, params)
  return obj("name", oget(fn, "name"), "description", oget(fn, "description"),
    "input_schema", is_obj(params) and raw(source_of(params)) or obj("type", "object"))
end

local function translate_tools(req)
  local out, err = chat.tools(oget(req, "tools"), declare)
  if err then return nil, nil, "tools", err end
  local mode, name, cerr = chat.tool_choice(oget(req, "tool_choice"), TOOL_CHOICE)
  if cerr then return nil, nil, "tool_choice", cerr end
  local tc = mode and obj("type", mode) or name and obj("type", "tool", "name", name) or nil
  if oget(req, "parallel_tool_calls") == false and out ~= nil then
    tc = tc or obj("type", "auto")
    if oget(tc, "type") ~= "none" then oset(tc, "disable_parallel_tool_use", true) end
  end
  return out, tc
end

-- The Messages request for an OpenAI chat request `s` (already known to be a JSON object) sent to
-- backend `b`. Returns the text and a note for the response path ("anthropic", or
-- "anthropic+usage" when a streaming client asked for usage), or nil, message, field.
local function request(s, b)
  local req, why, param = chat.parse(s, refused)
  if not req then return nil, why, param end
  local model = b.model or oget(req, "model")
  if type(model) ~= "string" then return nil, "'model' is required", "model" end
  local stream, serr = chat.stream(req)
  if serr then return nil, serr, "stream" end
  local system, messages, merr = translate_messages(oget(req, "messages"))
  if not system then return nil, merr, "messages" end
  local tools, choice, tparam, terr = translate_tools(req)
  if tparam then return nil, terr, tparam end
  local stop, max_tokens = chat.limits(req, b)
  local user = oget(req, "user")
  local out = obj("model", model, "max_tokens", max_tokens, "system", system.n > 0 and system or nil,
    "messages", messages, "temperature", present(oget(req, "temperature")), "top_p", present(oget(req, "top_p")),
    "stop_sequences", stop, "stream", stream == true or nil, "tools", tools, "tool_choice", choice,
    "metadata", type(user) == "string" and obj("user_id", user) or nil)
  return encode(out), nil, nil, chat.note("anthropic", stream, req)
end

-- Response -> OpenAI chat completion, stream -> chat.completion.chunk events

local FINISH = { end_turn = "stop", stop_sequence = "stop", max_tokens = "length", tool_use = "tool_calls",
  refusal = "content_filter", pause_turn = "stop", model_context_window_exceeded = "length" }

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

-- The details llmc.usage records: Anthropic's cache reads and writes (each also counted in the
-- prompt tokens, as the GenAI conventions ask of input tokens) and its own stop reason (end_turn,
-- max_tokens, tool_use, ...; the client sees OpenAI's finish_reason for it).
local function details(u, reasons)
  if u.read == nil and u.created == nil and reasons == nil then return nil end
  return { cache_read = u.read, cache_creation = u.created, finish_reasons = reasons }
end

local function usage_object(u)
  local prompt = (u.input or 0) + (u.created or 0) + (u.read or 0)
  local completion = u.output or 0
  return chat.usage(prompt, completion, u.read or 0), prompt, completion, prompt + completion
end

-- Anthropic's error types by status: for an error whose body says none (empty, HTML)
local ERROR_TYPES = values.ERROR_TYPES

-- The OpenAI error type of an Anthropic error object ({"type":"error","error":{type, message}}).
local function error_type(e)
  return text_or(oget(e, "type"), "api_error")
end

-- An Anthropic error body as an OpenAI error body; a body that is not one (empty, not JSON)
-- becomes a generic error naming the status.
local function error_body(s, status)
  return chat.error_body(s, status, error_type, ERROR_TYPES[status])
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
  local message = text_or(oget(e, "message"))
  return chat.untranslatable(status, "message", message and ": " .. message)
end

-- A non-streamed Messages answer `s` with HTTP `status` -> the OpenAI body, prompt, completion,
-- total tokens and model for accounting (nil when not known), and the status for the client:
-- an error keeps its status; a 2xx that cannot be translated becomes a 502.
local function response(s, status, created)
  if status < 200 or status > 299 then return error_body(s, status), nil, nil, nil, nil, status end
  local msg = decode(s)
  if not is_message(msg) then return untranslatable(msg, status), nil, nil, nil, nil, 502 end
  local texts, calls = {}, arr()
  local content = oget(msg, "content")
  for i = 1, (is_arr(content) and content.n or 0) do
    local block = content[i]
    local btype = oget(block, "type")
    if btype == "text" then
      texts[#texts + 1] = text_or(oget(block, "text")) -- not a string: dropped
    elseif btype == "tool_use" then
      apush(calls, chat.call(nil, oget(block, "id"), oget(block, "name"), oget(block, "input")))
    end -- thinking and other blocks have no OpenAI equivalent: dropped
  end
  local counts = usage_from(oget(msg, "usage"))
  local usage, p, c, t = usage_object(counts)
  local model, reason = oget(msg, "model"), oget(msg, "stop_reason")
  return chat.completion(oget(msg, "id"), created, model, chat.message(texts, calls), FINISH[reason] or "stop", usage),
    p, c, t, text_or(model), status,
    details(counts, type(reason) == "string" and { reason } or nil)
end

-- The translation state of one streamed answer: `feed` takes body chunks and returns the OpenAI
-- events for every complete Anthropic event in them (a partial line waits for the next chunk);
-- afterwards `prompt`, `completion`, `total`, `model` hold the usage for accounting. `failed` is
-- set when an event was over llmc.chat's MAX_EVENT.
local function stream(include_usage, created)
  local st = { id = "", model = "", tools = {}, ntools = 0, usage = {} }

  local function tool_delta(index, fields)
    return chunk(st, created, obj("tool_calls", arr({ obj("index", st.tools[index], unpack(fields)) })))
  end

  local handlers = {}
  function handlers.message_start(ev)
    local msg = oget(ev, "message")
    st.id = text_or(oget(msg, "id"), "")
    st.model = text_or(oget(msg, "model"), "")
    st.usage = usage_from(oget(msg, "usage"), st.usage)
    return chunk(st, created, obj("role", "assistant", "content", ""))
  end
  function handlers.content_block_start(ev)
    local block, index = oget(ev, "content_block"), count_of(oget(ev, "index"))
    if oget(block, "type") == "tool_use" and index then
      st.tools[index] = st.ntools
      st.ntools = st.ntools + 1
      return tool_delta(index, { "id", oget(block, "id"), "type", "function",
        "function", obj("name", oget(block, "name"), "arguments", "") })
    elseif oget(block, "type") == "text" and type(oget(block, "text")) == "string" and oget(block, "text") ~= "" then
      return chunk(st, created, obj("content", oget(block, "text")))
    end
    return ""
  end
  function handlers.content_block_delta(ev)
    local delta, index = oget(ev, "delta"), count_of(oget(ev, "index"))
    local dtype = oget(delta, "type")
    if dtype == "text_delta" then return chunk(st, created, obj("content", oget(delta, "text"))) end
    if dtype == "input_json_delta" and index and st.tools[index] then
      return tool_delta(index, { "function", obj("arguments", oget(delta, "partial_json")) })
    end
    return "" -- thinking, signatures, citations: no OpenAI equivalent
  end
  function handlers.message_delta(ev)
    st.usage = usage_from(oget(ev, "usage"), st.usage)
    local reason = oget(oget(ev, "delta"), "stop_reason")
    if type(reason) == "string" then
      st.reasons = { reason }
      return chunk(st, created, obj(), FINISH[reason] or "stop")
    end
    return ""
  end
  function handlers.message_stop()
    local out = ""
    if include_usage then out = chunk(st, created, nil, nil, (usage_object(st.usage))) end
    st.done = true
    return out .. chat.DONE
  end
  function handlers.error(ev)
    local e = oget(ev, "error")
    st.done = true
    return chat.error_event(e, error_type(e))
  end

  local function on_line(line)
    local ev = decode(line)
    local handler = handlers[oget(ev, "type")]
    if handler == nil or st.done then return "" end -- ping, unknown events
    return handler(ev)
  end

  st.feed = feeder(st, on_line)

  function st.totals()
    if st.usage.input == nil and st.usage.output == nil then return nil end
    local _, p, c, t = usage_object(st.usage)
    return p, c, t, st.model ~= "" and st.model or nil, details(st.usage, st.reasons)
  end

  return st
end

return { request = request, response = response, stream = stream, error = error_body }
