-- llmc translator for Google's Gemini API: OpenAI chat completion in, Gemini generateContent out,
-- and the answer back (docs/protocols.md, "Gemini"). LuaJIT / Lua 5.1; pure functions over strings,
-- no call into Envoy, so each is unit-tested under lupa (tests/test_gemini_lua.py).
--
-- Followed from Gemini's API reference (ai.google.dev/api): "Generating content" (models.generateContent,
-- models.streamGenerateContent with alt=sse; GenerateContentRequest: contents, systemInstruction, tools,
-- toolConfig, generationConfig; GenerateContentResponse: candidates, promptFeedback, usageMetadata,
-- modelVersion, responseId; FinishReason), "Caching"/"Content" (Content: role user|model, parts: text,
-- inlineData, functionCall, functionResponse), "Function calling" (tools[].functionDeclarations,
-- toolConfig.functionCallingConfig mode AUTO|ANY|NONE and allowedFunctionNames), "API keys"
-- (x-goog-api-key) and "Troubleshooting" (errors {"error": {code, message, status}}).
--
-- The translator contract is at the top of anthropic.lua. Gemini takes the model in the path, so
-- `request` returns a fifth value, the request path (b.path with `{model}` filled, the stream method
-- for a stream), which the request steps (llmc.request) use instead of b.path.

local values = require("llmc.values")
local chat = require("llmc.chat")
local decode, encode, NULL = values.decode, values.encode, values.NULL
local obj, arr, apush, raw = values.obj, values.arr, values.apush, values.raw
local oget, is_obj, is_arr, present, source_of = values.oget, values.is_obj, values.is_arr, values.present,
  values.source_of
local count_of, chunk, text_or = chat.count_of, chat.chunk, chat.text_or

local sub, format, concat = string.sub, string.format, table.concat

local G = {}

local METHOD, STREAM_METHOD = ":generateContent", ":streamGenerateContent"
-- A model name as Gemini's paths take it (models/{model}); the compiler checks configured ones alike.
local MODEL_NAME = "^[A-Za-z0-9][A-Za-z0-9._-]*$"
local MAX_MODEL = 128

---------------------------------------------------------------------------------------------------
-- Request: OpenAI chat -> GenerateContentRequest
---------------------------------------------------------------------------------------------------

-- The text of a content that may only hold text (system, assistant, tool): a string, or text and
-- refusal parts; nil and a message otherwise.
local function text_part(text)
  return obj("text", text)
end

local function text_parts(content, parts)
  return chat.content(content, parts, text_part)
end

-- A user's image: Gemini reads inline data (a base64 data: URL); it does not fetch arbitrary URLs.
local function image_part(part)
  local url, mime, data = chat.image_url(part)
  if not url then return nil, mime end
  if not mime then return nil, "an image must be a base64 data: URL here" end
  return obj("inlineData", obj("mimeType", mime, "data", data))
end

-- Gemini 3 signs the first function call of each step (thoughtSignature on its part) and refuses
-- (400) a next turn that sends the call back without it (ai.google.dev/gemini-api/docs/thought-signatures).
-- OpenAI's format has no field for it; Gemini's own OpenAI-compatible endpoint puts it in the tool
-- call's `extra_content.google.thought_signature`, which clients that send the assistant message back
-- as they got it (the openai SDK's message object) return: so does llmc, both ways. A step whose
-- first call carries none (Gemini signs only the first of parallel calls; a client that rebuilds its
-- messages, another model's history, e.g. after a failover) gets there the signature Google
-- documents for calls Gemini did not sign.
local UNSIGNED = "skip_thought_signature_validator"

-- An assistant's tool call (the i-th) as a functionCall part; `names` learns each call's id ->
-- function name (a later tool message names only the id; Gemini's functionResponse needs the name).
local function call_part(id, name, input, names, call, i)
  names[id] = name
  local sig = oget(oget(oget(call, "extra_content"), "google"), "thought_signature")
  return obj("functionCall", obj("name", name, "args", input.s and raw(source_of(input)) or input),
    "thoughtSignature", text_or(sig) or i == 1 and UNSIGNED or nil)
end

-- A tool message's result: a JSON object is the response itself; any other text is {"output": text}
-- (FunctionResponse.response is an object; "output" is the key Gemini's reference names for it).
local function tool_response(content)
  local parts, err = text_parts(content, arr())
  if not parts then return nil, err end
  local texts = {}
  for i = 1, parts.n do texts[i] = oget(parts[i], "text") end
  local text = concat(texts)
  local v = decode(text)
  if is_obj(v) then return raw(source_of(v)) end
  return obj("output", text)
end

-- OpenAI messages -> Gemini systemInstruction parts and `contents` (roles user/model; consecutive
-- turns of one role are merged, as the function responses of one model turn must be).
local function translate_messages(messages)
  if not is_arr(messages) or messages.n == 0 then return nil, nil, "'messages' must be a non-empty array" end
  local system, contents, names = arr(), arr(), {}
  for i = 1, messages.n do
    local m = messages[i]
    local role, parts, err = oget(m, "role"), nil, nil
    if role == "system" or role == "developer" then
      parts, err = text_parts(oget(m, "content"), system)
      if not parts then return nil, nil, err end
    else
      if role == "user" then
        parts, err = chat.content(oget(m, "content"), arr(), text_part, image_part)
      elseif role == "assistant" then
        role = "model"
        parts, err = text_parts(oget(m, "content"), arr())
        if parts then parts, err = chat.tool_calls(oget(m, "tool_calls"), parts, call_part, names) end
      elseif role == "tool" then
        role = "user"
        local id = oget(m, "tool_call_id")
        local name = type(id) == "string" and names[id] or nil
        if name == nil then
          return nil, nil, "'tool_call_id' names no earlier tool call"
        end
        local response
        response, err = tool_response(oget(m, "content"))
        if response then parts = arr({ obj("functionResponse", obj("name", name, "response", response)) }) end
      else
        return nil, nil, "message role " .. tostring(role) .. chat.UNSUPPORTED
      end
      if not parts then return nil, nil, err end
      -- no parts: nothing to say (an assistant turn without content or calls), and Gemini rejects empty parts
      if parts.n > 0 then chat.append(contents, role, "parts", parts) end
    end
  end
  return system, contents
end

local MODES = { none = "NONE", auto = "AUTO", required = "ANY" }

-- tools -> [{functionDeclarations}] (the client's JSON Schema passed as parametersJsonSchema, as
-- sent); tool_choice -> toolConfig.functionCallingConfig.
local function declare(fn, params)
  return obj("name", oget(fn, "name"), "description", present(oget(fn, "description")),
    "parametersJsonSchema", is_obj(params) and raw(source_of(params)) or nil)
end

local function translate_tools(req)
  local decls, err = chat.tools(oget(req, "tools"), declare)
  if err then return nil, nil, "tools", err end
  local mode, name, cerr = chat.tool_choice(oget(req, "tool_choice"), MODES)
  if cerr then return nil, nil, "tool_choice", cerr end
  local config = mode and obj("mode", mode) or name and obj("mode", "ANY", "allowedFunctionNames", arr({ name })) or nil
  return decls and decls.n > 0 and arr({ obj("functionDeclarations", decls) }) or nil,
    config and obj("functionCallingConfig", config) or nil
end

-- response_format -> responseMimeType (+ responseJsonSchema, the client's schema as sent).
local function response_format(req)
  local rf = oget(req, "response_format")
  local rtype = oget(rf, "type")
  if rf == nil or rf == NULL or rtype == "text" then return nil end
  if rtype == "json_object" then return "application/json" end
  if rtype == "json_schema" then
    local schema = oget(oget(rf, "json_schema"), "schema")
    return "application/json", is_obj(schema) and raw(source_of(schema)) or nil
  end
  return nil, nil, "unknown response_format type " .. tostring(rtype)
end

-- The model for the path: the configured one, else the client's (an optional "models/" prefix, as
-- Gemini's own names carry it, is dropped); nil and a message when it cannot go in a path.
local function path_model(b, req)
  local model = b.model or oget(req, "model")
  if type(model) ~= "string" then return nil, "'model' is required" end
  if sub(model, 1, 7) == "models/" then model = sub(model, 8) end
  if #model > MAX_MODEL or not model:match(MODEL_NAME) then
    return nil, "'model' is not a Gemini model name"
  end
  return model
end

-- The request path for `model`: b.path with {model} filled; a stream calls streamGenerateContent
-- with alt=sse (server-sent events; without it Gemini streams one JSON array).
function G.path(template, model, stream)
  local path, query = template:match("^([^?]*)(.*)$")
  path = path:gsub("{model}", model)
  if stream then
    if sub(path, -#METHOD) == METHOD then path = sub(path, 1, -#METHOD - 1) .. STREAM_METHOD end
    query = query == "" and "?alt=sse" or query .. "&alt=sse"
  end
  return path .. query
end

-- The GenerateContentRequest for an OpenAI chat request `s` sent to backend `b`. Returns the text,
-- nil, nil, the note for the response path ("gemini", or "gemini+usage" when a streaming client
-- asked for usage) and the path; or nil, message, field.
function G.request(s, b)
  local req, why, param = chat.parse(s)
  if not req then return nil, why, param end
  local model, merr = path_model(b, req)
  if not model then return nil, merr, "model" end
  local stream, serr = chat.stream(req)
  if serr then return nil, serr, "stream" end
  if stream == nil or stream == NULL then stream = b.stream == true end
  local system, contents, cerr = translate_messages(oget(req, "messages"))
  if not system then return nil, cerr, "messages" end
  local tools, tool_config, tparam, terr = translate_tools(req)
  if tparam then return nil, terr, tparam end
  local mime, schema, rerr = response_format(req)
  if rerr then return nil, rerr, "response_format" end
  local stop, max_tokens = chat.limits(req, b)
  local gc = obj("stopSequences", stop, "maxOutputTokens", max_tokens,
    "temperature", present(oget(req, "temperature")), "topP", present(oget(req, "top_p")),
    "presencePenalty", present(oget(req, "presence_penalty")),
    "frequencyPenalty", present(oget(req, "frequency_penalty")), "seed", present(oget(req, "seed")),
    "responseMimeType", mime, "responseJsonSchema", schema)
  local out = obj("contents", contents, "systemInstruction", system.n > 0 and obj("parts", system) or nil,
    "tools", tools, "toolConfig", tool_config, "generationConfig", encode(gc) ~= "{}" and gc or nil)
  return encode(out), nil, nil, chat.note("gemini", stream, req), G.path(b.path, model, stream)
end

---------------------------------------------------------------------------------------------------
-- Response: GenerateContentResponse -> chat.completion; streamed -> chat.completion.chunk events
---------------------------------------------------------------------------------------------------

-- FinishReason -> finish_reason: the safety and policy stops are content filters; STOP with
-- function calls is "tool_calls"; an unknown or unspecified reason is "stop".
local FINISH = { STOP = "stop", MAX_TOKENS = "length" }
for _, reason in ipairs({ "SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY", "LANGUAGE" }) do
  FINISH[reason] = "content_filter"
end

local function finish_of(reason, calls)
  local f = FINISH[reason] or "stop"
  if f == "stop" and calls > 0 then return "tool_calls" end
  return f
end

-- usageMetadata -> counts: the prompt includes tool-use prompt tokens, the completion the thinking
-- tokens (OpenAI counts reasoning tokens as completion tokens), so prompt + completion = total.
-- `read` and `reasoning`: the cached and thinking counts as Gemini reported them (nil: not reported).
local function usage_from(u)
  if not is_obj(u) then return nil end
  local prompt = (count_of(oget(u, "promptTokenCount")) or 0) + (count_of(oget(u, "toolUsePromptTokenCount")) or 0)
  local read, reasoning = count_of(oget(u, "cachedContentTokenCount")), count_of(oget(u, "thoughtsTokenCount"))
  local completion = (count_of(oget(u, "candidatesTokenCount")) or 0) + (reasoning or 0)
  return { prompt = prompt, completion = completion, total = prompt + completion, cached = read or 0,
    thoughts = reasoning or 0, read = read, reasoning = reasoning }
end

-- The GenAI details llmc.usage records (issue 34; the contract's `x`): the cached prompt tokens
-- (cachedContentTokenCount, a part of promptTokenCount, as the conventions count input tokens), the
-- thinking tokens (thoughtsTokenCount) and Gemini's own finish reason (STOP, MAX_TOKENS, ...; the
-- client sees OpenAI's finish_reason for it). Gemini reports no cache writes. A reason is the first
-- candidate's, the one answered: a prompt Gemini blocked has none (no generation), nor has
-- FINISH_REASON_UNSPECIFIED.
local function details(u, reason)
  local read, reasoning = u and u.read, u and u.reasoning
  if read == nil and reasoning == nil and reason == nil then return nil end
  return { cache_read = read, reasoning = reasoning, finish_reasons = reason and { reason } or nil }
end

local function reason_of(cand)
  local reason = oget(cand, "finishReason")
  if type(reason) == "string" and reason ~= "FINISH_REASON_UNSPECIFIED" then return reason end
  return nil
end

local function usage_object(u)
  return chat.usage(u.prompt, u.completion, u.cached, u.thoughts)
end

-- Gemini's error statuses (google.rpc.Code names) and HTTP statuses -> OpenAI error types.
local STATUS_TYPES = { INVALID_ARGUMENT = "invalid_request_error", FAILED_PRECONDITION = "invalid_request_error",
  OUT_OF_RANGE = "invalid_request_error", UNAUTHENTICATED = "authentication_error",
  PERMISSION_DENIED = "permission_error", NOT_FOUND = "not_found_error", RESOURCE_EXHAUSTED = "rate_limit_error",
  INTERNAL = "server_error", UNAVAILABLE = "server_error", DEADLINE_EXCEEDED = "server_error" }
local HTTP_TYPES = { [400] = "invalid_request_error", [401] = "authentication_error", [403] = "permission_error",
  [404] = "not_found_error", [429] = "rate_limit_error" }

-- A Gemini error body ({"error": {code, message, status}}) as an OpenAI error body (code: Gemini's
-- status); a body that is not one becomes a generic error naming the HTTP status.
local function error_type(e, status)
  local gstatus = oget(e, "status")
  return STATUS_TYPES[gstatus] or HTTP_TYPES[status] or "api_error", text_or(gstatus)
end

function G.error(s, status)
  return chat.error_body(s, status, error_type, HTTP_TYPES[status])
end

-- The text and the tool calls of a candidate's parts (thought summaries are not the answer).
-- A streamed tool call carries its `index` among the answer's calls; a message's calls do not.
local function read_parts(content, ident, first_call, texts, calls, indexed)
  local parts = oget(content, "parts")
  for i = 1, (is_arr(parts) and parts.n or 0) do
    local part = parts[i]
    local text, call = oget(part, "text"), oget(part, "functionCall")
    if type(text) == "string" and oget(part, "thought") ~= true then
      texts[#texts + 1] = text
    elseif is_obj(call) then
      local args = oget(call, "args")
      local n = first_call + calls.n
      local id, sig = oget(call, "id"), text_or(oget(part, "thoughtSignature"))
      -- the call's signature, where Gemini's OpenAI-compatible endpoint puts it (see UNSIGNED)
      apush(calls, chat.call(indexed and n or nil, type(id) == "string" and id or format("call_%s_%d", ident, n),
        oget(call, "name"), args, sig and obj("google", obj("thought_signature", sig))))
    end
  end
end

-- A non-streamed answer `s` with HTTP `status` -> the OpenAI body, prompt, completion and total
-- tokens and the model (nil when unknown), the status for the client (an error keeps its status; a
-- 2xx that is not a GenerateContentResponse becomes a 502) and the details (`details`). A prompt Gemini blocked
-- (promptFeedback.blockReason, no candidates) is a completion with finish_reason content_filter.
function G.response(s, status, created)
  if status < 200 or status > 299 then return G.error(s, status), nil, nil, nil, nil, status end
  local r = decode(s)
  local candidates = oget(r, "candidates")
  if not is_obj(r) or not (is_arr(candidates) or is_obj(oget(r, "promptFeedback"))) then
    return chat.untranslatable(status, "response"), nil, nil, nil, nil, 502
  end
  local ident = text_or(oget(r, "responseId"), "gemini")
  local cand = is_arr(candidates) and candidates[1] or nil
  local texts, calls = {}, arr()
  read_parts(oget(cand, "content"), ident, 0, texts, calls, false)
  local finish = cand and finish_of(oget(cand, "finishReason"), calls.n) or "content_filter"
  local u = usage_from(oget(r, "usageMetadata"))
  local model = oget(r, "modelVersion")
  model = text_or(model)
  local out = chat.completion(ident, created, model or "", chat.message(texts, calls), finish, u and usage_object(u) or nil)
  local x = details(u, reason_of(cand))
  if u == nil then return out, nil, nil, nil, model, status, x end
  return out, u.prompt, u.completion, u.total, model, status, x
end

-- The translation state of one streamed answer (streamGenerateContent?alt=sse: every event a
-- GenerateContentResponse with the next parts). `feed` takes body chunks and returns the OpenAI
-- events of every complete line; the event with a finishReason ends the OpenAI stream (its finish
-- event, the usage event when the client asked, [DONE]) -- Gemini sends no end marker of its own.
-- `totals` gives the usage and the details for accounting; `failed` is set after an event over
-- llmc.chat's MAX_EVENT.
function G.stream(include_usage, created)
  local st = { id = "gemini", model = "", ncalls = 0, started = false }

  local function finish(reason)
    local out = { chunk(st, created, obj(), reason) }
    if include_usage and st.usage then
      out[#out + 1] = chunk(st, created, nil, nil, usage_object(st.usage))
    end
    st.done = true
    out[#out + 1] = chat.DONE
    return concat(out)
  end

  local function on_line(line)
    local ev = decode(line)
    if not is_obj(ev) then return "" end
    st.usage = usage_from(oget(ev, "usageMetadata")) or st.usage
    if st.done then return "" end -- usage after the end still counts; nothing more is sent
    local e = oget(ev, "error")
    if is_obj(e) then
      st.done, st.failed = true, true
      return chat.error_event(e, error_type(e))
    end
    st.id, st.model = text_or(oget(ev, "responseId"), st.id), text_or(oget(ev, "modelVersion"), st.model)
    local out = {}
    if not st.started then
      st.started = true
      out[1] = chunk(st, created, obj("role", "assistant", "content", ""))
    end
    local candidates = oget(ev, "candidates")
    local cand = is_arr(candidates) and candidates[1] or nil
    local texts, calls = {}, arr()
    read_parts(oget(cand, "content"), st.id, st.ncalls, texts, calls, true)
    if #texts > 0 then out[#out + 1] = chunk(st, created, obj("content", concat(texts))) end
    if calls.n > 0 then
      st.ncalls = st.ncalls + calls.n
      out[#out + 1] = chunk(st, created, obj("tool_calls", calls))
    end
    local reason = reason_of(cand)
    if reason then
      st.reason = reason
      -- a new usage table, so the response path records the reason (it records on a new table only)
      if st.usage then st.usage = setmetatable({}, { __index = st.usage }) end
      out[#out + 1] = finish(finish_of(reason, st.ncalls))
    elseif cand == nil and is_obj(oget(ev, "promptFeedback")) and oget(oget(ev, "promptFeedback"), "blockReason") then
      out[#out + 1] = finish("content_filter")
    end
    return concat(out)
  end

  st.feed = chat.feeder(st, on_line)

  function st.totals()
    local u = st.usage
    if u == nil then return nil end
    return u.prompt, u.completion, u.total, st.model ~= "" and st.model or nil, details(u, st.reason)
  end

  return st
end

return G
