-- llmc.request: the steps of shaping one request for one backend, shared by the request path
-- (llmc.main) and the tries of a failover rule (llmc.failover): llmc's own OpenAI-format replies,
-- access-log records, credentials, endpoints, headers, and the body through TRANSLATORS.
--
-- TRANSLATORS[format] is the module of a translated protocol (llmc.<format>, e.g. llmc.anthropic;
-- the contract is at the top of anthropic.lua), or false for OpenAI's own protocol, which the scanner
-- splices (llmc.scanner's M.shape). A filter's bundle holds only the translators its providers need
-- (compiler/luabundle.py); a format without its module there is refused (400), never sent as it is.

local scanner = require("llmc.scanner")
local context = require("llmc.context")

local sub, find, format = string.sub, string.find, string.format
local encode_string, shape_openai, rewrite = scanner.encode_string, scanner.shape, scanner.rewrite
local METADATA_NS = context.METADATA_NS

local M = {}

local preload = package.preload
-- what a format whose module is not in this filter's bundle gets: every request refused (never
-- forwarded in a format its provider does not speak)
local MISSING = {
  request = function(_, b) return nil, "this proxy's filter has no translator for format " .. tostring(b.format) end,
}

-- format -> its translator (looked up once per VM), or false for "openai": spliced, not translated.
local TRANSLATORS = setmetatable({ openai = false }, { __index = function(t, fmt)
  local name = "llmc." .. tostring(fmt)
  local mod = preload[name] ~= nil and require(name) or MISSING
  rawset(t, fmt, mod)
  return mod
end })
M.TRANSLATORS = TRANSLATORS

-- gen_ai.operation.name of an endpoint other than chat (OpenTelemetry's GenAI conventions); chat,
-- every request of a provider without basePath, records none: the access log's default
local OPERATIONS = { embeddings = "embeddings", completions = "text_completion" }

-- What the access log says about a request shaped for backend `b` of rule `cfg`: four entries at
-- most (each costs a call into Envoy). `md` is the stream's dynamic metadata. `gen_ai_provider` is
-- the provider's gen_ai.provider.name, computed by the compiler (compiler/telemetry.py).
local function record(md, cfg, b, endpoint)
  md:set(METADATA_NS, "provider", b.provider)
  md:set(METADATA_NS, "gen_ai_provider", b.gen_ai_provider)
  md:set(METADATA_NS, "rule", cfg.rule_id)
  local model = endpoint == "chat" and b.model or nil
  if model ~= nil then md:set(METADATA_NS, "request_model", model) end
  local operation = OPERATIONS[endpoint or "chat"]
  if operation ~= nil then md:set(METADATA_NS, "operation", operation) end
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

-- The request headers for backend `b` (a pure function, like M.shape: any entry point that shapes a
-- request for a backend calls both): the key in the protocol's auth header, the path (`path`, as
-- M.prepare gives it; else the provider's with the client's query string), the protocol's fixed
-- headers. Token usage is read from the response, so the provider is asked not to compress it; the
-- client gets what Envoy sends it (the sidecar adds no compression).
function M.request_headers(b, key, original_path, path)
  local out = { { ":path", path or with_query(b.path, original_path) }, { "content-type", "application/json" },
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
-- A backend with several keys uses the one llmc.keys chooses, recorded as llmc:api_key_id in the
-- stream `h`'s metadata.
local function credential(b, h)
  local ks = b.keys
  if ks then return ks.use(ks, h) end -- several keys: llmc.keys chooses (llmc.context, NO_KEYS)
  if b.api_key_file == nil then return b.api_key end
  return context.api_key(b, os.time()) or false
end

-- Which OpenAI endpoint a request is for, from its path (query string ignored): "chat" for "/" and
-- paths ending in /chat/completions, "embeddings", "completions", or nil (unknown: 404). Only for
-- backends with a base path; every POST to one without is a chat completion (ASM's behaviour).
local function endpoint_of(path)
  local p = path and path:match("^[^?]*") or "/"
  if p == "/" or sub(p, -17) == "/chat/completions" then return "chat" end
  if sub(p, -11) == "/embeddings" then return "embeddings" end
  if sub(p, -12) == "/completions" then return "completions" end
  return nil
end

M.endpoint_of = endpoint_of

local function endpoint_for(b, original_path)
  if b.base_path == nil then return "chat" end
  return endpoint_of(original_path)
end

local function unknown_endpoint(h, cfg, b, original_path)
  return reply(h, 404, "invalid_request_error", "unknown_url", "llmc: unknown OpenAI endpoint " ..
    (original_path or ""):match("^[^?]*") .. " (chat/completions, embeddings and completions are served)", cfg, b)
end

-- The chat request body for backend `b` (a pure function): spliced by the scanner for an OpenAI
-- backend, translated by the module of its protocol otherwise (M.shape's results either way).
local function shape(s, b, client_model_json, scanned)
  local t = TRANSLATORS[b.format or "openai"]
  if t then return t.request(s, b) end -- translated, not shaped
  return shape_openai(s, b, client_model_json, scanned)
end
M.shape = shape

-- THE request step, the same for the request path (llmc.main) and every failover try (llmc.failover),
-- a pure function: the endpoint of the client's path, the body for backend `b` (spliced or
-- translated), the path it goes to (the provider's with the client's query string; or a translator's
-- own, whole: Gemini's, the model in it, where the client's OpenAI query string means nothing and
-- Google's APIs refuse parameters they do not define), and the translation note. Returns endpoint,
-- body, path, note; or nil, nil (an unknown endpoint), or nil, message, param (a body `b` cannot take). `model_json`: the client's model (JSON text) when
-- it chose the rule and no model is configured: written back so duplicates collapse to the model that routed.
-- A chat completion is shaped (M.shape); other endpoints keep the client's model (`model_json`, the
-- one that routed, when given: duplicates collapse to it there too) and get no stream fields, and
-- are still validated.
local function prepare(b, s, original_path, model_json, scanned)
  local endpoint = endpoint_for(b, original_path)
  if endpoint == nil then return nil, nil end
  local path, out, err, param, note, own_path = b.path
  if endpoint ~= "chat" then
    path = b.base_path .. "/" .. endpoint .. b.base_query
    out, err, param = rewrite(s, model_json and { { "model", model_json } } or {}, scanned and scanned[1],
      scanned and scanned[2])
  else
    out, err, param, note, own_path = shape(s, b, model_json, scanned)
  end
  if out == nil then return nil, err, param end
  return endpoint, out, own_path or with_query(path, original_path), note
end

-- Sets the request headers of backend `b` (M.request_headers) on the header map.
local function set_headers(headers, b, key, original_path, path)
  local set = M.request_headers(b, key, original_path, path)
  for i = 1, #set do
    local v = set[i][2]
    if v then headers:replace(set[i][1], v) else headers:remove(set[i][1]) end
  end
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

M.record, M.reply, M.too_large, M.credential, M.endpoint_for = record, reply, too_large, credential, endpoint_for
M.OPERATIONS = OPERATIONS
M.unknown_endpoint, M.missing_key, M.read_body = unknown_endpoint, missing_key, read_body
M.prepare, M.set_headers = prepare, set_headers

return M
