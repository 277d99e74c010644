-- llmc.chat: the OpenAI chat completions side every translator shares (reading the client's request,
-- writing the answer and its stream events, reading the provider's stream line by line). One copy,
-- so a filter that serves several translated protocols carries it once (issue 28: every bundle a
-- filter without failover needs fits in 56 KiB; docs/performance.md, "Bundle sizes").

local values = require("llmc.values")

local find, sub, format, concat, byte = string.find, string.sub, string.format, table.concat, string.byte
local decode, encode, NULL, NUM = values.decode, values.encode, values.NULL, values.NUM
local obj, arr, apush, oget, is_obj, is_arr, present = values.obj, values.arr, values.apush, values.oget,
  values.is_obj, values.is_arr, values.present
local openai_error = values.openai_error

local C = {}

local UNSUPPORTED = " is not supported by this provider"
C.UNSUPPORTED = UNSUPPORTED

function C.count_of(v)
  if getmetatable(v) == NUM then return tonumber(v[1]) end
  return nil
end

-- `v` if it is a string, else `default`.
local function text_or(v, default)
  if type(v) == "string" then return v end
  return default
end
C.text_or = text_or

-- Request fields that would change the shape of the answer and that no translated protocol maps:
-- refused (400) rather than answered differently. `check(req)`, the translator's own refusals,
-- runs after top_logprobs.
local function refused(req, check)
  local n = oget(req, "n")
  if n ~= nil and n ~= NULL and not (C.count_of(n) == 1) then
    return "n", "'n' other than 1 (several choices)" .. UNSUPPORTED
  end
  if oget(req, "logprobs") == true then return "logprobs", "'logprobs'" .. UNSUPPORTED end
  local tl = oget(req, "top_logprobs")
  if tl ~= nil and tl ~= NULL then return "top_logprobs", "'top_logprobs'" .. UNSUPPORTED end
  if check then
    local param, why = check(req)
    if param then return param, why end
  end
  local audio = oget(req, "audio")
  if audio ~= nil and audio ~= NULL then return "audio", "audio output" .. UNSUPPORTED end
  local modalities = oget(req, "modalities")
  if is_arr(modalities) then
    for i = 1, modalities.n do
      if modalities[i] ~= "text" then return "modalities", "output modalities other than text" .. UNSUPPORTED end
    end
  end
  return nil
end

-- The client's request `s` decoded, or nil, a message and the field: not JSON, not an object, or
-- a field the translator refuses (`refused`).
function C.parse(s, check)
  local req, err = decode(s)
  if err then return nil, "the request body is not valid JSON: " .. err end
  if not is_obj(req) then return nil, "the request body must be a JSON object" end
  local param, why = refused(req, check)
  if param then return nil, why, param end
  return req
end

-- The request's `stream` (nil, NULL or a boolean), or nil and a message.
function C.stream(req)
  local stream = oget(req, "stream")
  if stream ~= nil and stream ~= NULL and type(stream) ~= "boolean" then return nil, "'stream' must be a boolean" end
  return stream
end

-- `stop` as a list (a string is one stop sequence) and the output limit: the client's
-- max_completion_tokens or max_tokens, else the backend's.
function C.limits(req, b)
  local stop = oget(req, "stop")
  if type(stop) == "string" then stop = arr({ stop }) elseif not is_arr(stop) then stop = nil end
  return stop, present(oget(req, "max_completion_tokens")) or present(oget(req, "max_tokens")) or b.max_tokens
end

-- The blocks of a message's `content` pushed to `out`: `text(t)` of a string or of each text or
-- refusal part, `image(part)` of an image_url part where given (nil, message: refused); any other
-- part is refused (nil, message). nil or null: no blocks. An empty text is no block: Anthropic and
-- Gemini refuse empty text blocks and parts (400), and agents send `content: ""` beside an
-- assistant's tool calls.
function C.content(content, out, text, image)
  if content == nil or content == NULL then return out end
  if type(content) == "string" then
    if content ~= "" then apush(out, text(content)) end
    return out
  end
  if not is_arr(content) then return nil, "'content' must be a string or an array of parts" end
  for i = 1, content.n do
    local part = content[i]
    local ptype = oget(part, "type")
    local t = ptype == "text" and oget(part, "text") or ptype == "refusal" and oget(part, "refusal") or nil
    local block, err
    if type(t) == "string" then
      block = t ~= "" and text(t)
    elseif ptype == "image_url" and image then
      block, err = image(part)
      if not block then return nil, err end
    else
      return nil, "content part type " .. tostring(ptype) .. UNSUPPORTED
    end
    if block then apush(out, block) end
  end
  return out
end

-- An assistant message's `tool_calls` pushed to `out` as `each(id, name, arguments, ctx, call, i)`
-- (the arguments a decoded JSON object; the call itself, the i-th); nil, message for a malformed
-- call. nil or null: none.
function C.tool_calls(calls, out, each, ctx)
  if calls == nil or calls == NULL then return out end
  if not is_arr(calls) then return nil, "'tool_calls' must be an array" end
  for i = 1, calls.n do
    local fn = oget(calls[i], "function")
    local id, name, args = oget(calls[i], "id"), oget(fn, "name"), oget(fn, "arguments")
    if type(id) ~= "string" or type(name) ~= "string" or type(args) ~= "string" then
      return nil, "a tool call needs id, function.name and string function.arguments"
    end
    local input = args == "" and obj() or decode(args)
    if not is_obj(input) then return nil, "tool call arguments must be a JSON object" end
    apush(out, each(id, name, input, ctx, calls[i], i))
  end
  return out
end

-- `tools` (nil: none) -> the list of `declare(fn, parameters)` of each function tool; nil, message
-- for another kind of tool or one without a name.
function C.tools(tools, declare)
  if tools == nil or tools == NULL then return nil end
  if not is_arr(tools) then return nil, "'tools' must be an array" end
  local out = arr()
  for i = 1, tools.n do
    local fn = oget(tools[i], "function")
    if oget(tools[i], "type") ~= "function" or not text_or(oget(fn, "name")) then
      return nil, "tools other than named functions" .. UNSUPPORTED
    end
    apush(out, declare(fn, oget(fn, "parameters")))
  end
  return out
end

-- tool_choice: its mode by `modes` (none, auto, required), or the function it names (nil, name);
-- or nil, nil, message.
function C.tool_choice(choice, modes)
  if type(choice) == "string" then
    if not modes[choice] then return nil, nil, "unknown tool_choice " .. choice end
    return modes[choice]
  elseif is_obj(choice) then
    local name = oget(oget(choice, "function"), "name")
    if type(name) ~= "string" then return nil, nil, "tool_choice needs function.name" end
    return nil, name
  end
  return nil
end

-- Appends message `items` (a list under `key`) of `role` to `list`, into its last message when that
-- has the same role (both providers want alternating roles; tool results must be merged).
function C.append(list, role, key, items)
  local last = list[list.n]
  if last ~= nil and oget(last, "role") == role then
    local target = oget(last, key)
    for k = 1, items.n do apush(target, items[k]) end
  else
    apush(list, obj("role", role, key, items))
  end
end

-- The note the response path gets back (the contract's): "<format>", or "<format>+usage" when a
-- streaming client asked for usage (stream_options.include_usage).
function C.note(format_name, stream, req)
  if stream == true and oget(oget(req, "stream_options"), "include_usage") == true then
    return format_name .. "+usage"
  end
  return format_name
end

-- An image_url part's URL; nil and a message when it has none.
function C.image_url(part)
  local url = oget(oget(part, "image_url"), "url")
  if type(url) ~= "string" then return nil, "an image_url part needs image_url.url" end
  return url, url:match("^data:([^;,]+);base64,(.*)$")
end

-- The assistant message of an answer: its texts joined and its tool calls.
function C.message(texts, calls)
  return obj("role", "assistant", "content", #texts > 0 and concat(texts) or NULL,
    "refusal", NULL, "tool_calls", calls.n > 0 and calls or nil)
end

-- A tool call of the answer (`index`: a streamed call's, else nil); `args` a decoded object;
-- `extra`: the call's extra_content (a provider's own data the client sends back), or nil.
function C.call(index, id, name, args, extra)
  return obj("index", index, "id", id, "type", "function", "function", obj("name", name,
    "arguments", is_obj(args) and args.s and values.source_of(args) or "{}"), "extra_content", extra)
end

-- OpenAI's usage object: prompt_tokens_details.cached_tokens always, completion_tokens_details
-- with the reasoning tokens where the provider reports them.
function C.usage(prompt, completion, cached, reasoning)
  return obj("prompt_tokens", prompt, "completion_tokens", completion, "total_tokens", prompt + completion,
    "prompt_tokens_details", obj("cached_tokens", cached),
    "completion_tokens_details", reasoning and obj("reasoning_tokens", reasoning))
end

-- A chat.completion with one choice.
function C.completion(id, created, model, message, finish, usage)
  return encode(obj("id", id, "object", "chat.completion", "created", created, "model", model,
    "choices", arr({ obj("index", 0, "message", message, "logprobs", NULL, "finish_reason", finish) }), "usage", usage))
end

local function event(v)
  return "data: " .. encode(v) .. "\n\n"
end

-- A chat.completion.chunk event of stream `st` (st.id, st.model): one choice's delta, or (no
-- delta) the usage event with no choices.
function C.chunk(st, created, delta, finish, usage)
  return event(obj("id", st.id, "object", "chat.completion.chunk", "created", created, "model", st.model,
    "choices", delta and arr({ obj("index", 0, "delta", delta, "logprobs", NULL,
      "finish_reason", finish or NULL) }) or arr(), "usage", usage))
end

C.DONE = "data: [DONE]\n\n"

-- The error event of a stream the provider ended with error `e` (its message, else a generic one).
function C.error_event(e, etype, code)
  return event(openai_error(text_or(oget(e, "message"), "llmc: the provider reported an error"), etype, code))
end

-- The OpenAI error body of a provider's error answer `s` with HTTP `status`: its error object's
-- message ({"error": {"message": ...}}), with the type and code `types(e, status)` gives; an
-- answer without one (empty, HTML, not JSON) becomes a generic error naming the status, of type
-- `fallback` (else api_error).
function C.error_body(s, status, types, fallback)
  local e = oget(decode(s), "error")
  if type(oget(e, "message")) == "string" then return encode(openai_error(oget(e, "message"), types(e, status))) end
  return encode(openai_error("llmc: the provider answered " .. tostring(status) .. " without an error message",
    fallback or "api_error"))
end

-- The 502 body of a 2xx answer that is not a `what` (message, response) llmc can translate.
function C.untranslatable(status, what, detail)
  return encode(openai_error("llmc: the provider's answer (HTTP " .. tostring(status) ..
    ") is not a " .. what .. " llmc can translate" .. (detail or ""), "server_error", "llmc_untranslatable_answer"))
end

-- A translated stream's event may be this large (waiting for its end in memory); a larger one ends
-- the stream with an OpenAI error event, never with finish_reason and [DONE] over a gap.
local MAX_EVENT = 1048576

-- The `feed` of stream state `st`: takes body chunks and returns what `on_line` makes of every
-- complete "data:" line in them (a partial line waits for the next chunk; a trailing "\r" is
-- JSON white space). After a line over MAX_EVENT, st.done and st.failed are set and nothing
-- more is read.
function C.feeder(st, on_line)
  -- the pieces of an unfinished line (a list: a string grown per chunk copies it per chunk)
  local pending, npending = {}, 0

  local function too_large()
    st.done, st.failed, pending, npending = true, true, {}, 0
    return event(openai_error(format("llmc: a stream event over %d MiB: the answer is incomplete", MAX_EVENT / 1048576),
      "server_error", "llmc_event_too_large"))
  end

  return function(s)
    if st.failed then return "" end
    if not find(s, "\n", 1, true) then
      npending = npending + #s
      if npending > MAX_EVENT then return too_large() end
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
      if nl - start > MAX_EVENT then
        out[#out + 1] = too_large()
        return concat(out)
      end
      if byte(text, start) == 100 and sub(text, start, start + 4) == "data:" then
        out[#out + 1] = on_line(sub(text, start + 5, nl - 1))
      end
      start = nl + 1
    end
    npending = #text - start + 1
    if npending > MAX_EVENT then
      out[#out + 1] = too_large()
    elseif npending > 0 then
      pending[1] = sub(text, start)
    end
    return concat(out)
  end
end

return C
