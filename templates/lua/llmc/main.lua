-- llmc data plane: shapes LLM requests on routes that carry llmc's per-route context.
--
-- Runs in Envoy's Lua filter (LuaJIT, Lua 5.1 syntax) as one bundle of modules
-- (templates/lua/llmc/*.lua, joined by compiler/luabundle.py through package.preload); this is the
-- entry module: envoy_on_request, envoy_on_response, and the public surface M. Per-virtual-host data
-- arrives as its filter_context (llmc.context); nothing in these files is generated.
--
-- Per request (only on llmc virtual hosts; the filter has no default script):
--   1. pick the backend (by weight when the rule has several) and, if weighted, overwrite the
--      routing header x-llmc-provider (so a client-sent value cannot steer) and clear the route
--      cache once, so Envoy re-selects the pinned route of that backend; every llmc route removes
--      the header before the request goes upstream;
--   2. read and validate the body, set model/stream (llmc.scanner) or translate it (TRANSLATORS,
--      llmc.request), set Authorization, :path and content-type for the backend the request will
--      actually reach;
--   3. answer bad requests with an OpenAI-format JSON error; never forward a half-rewritten request.
--
-- Responses: usage is read as the body passes (llmc.usage); a translated answer is translated back
-- by its protocol's module; failover tries are shaped by llmc.failover in the upstream filter.
-- Optional modules (failover, translators, values) are in a filter's bundle only when its rules
-- need them.

local scanner = require("llmc.scanner")
local context = require("llmc.context")
local request = require("llmc.request")
local usage = require("llmc.usage")

local byte, sub, find, concat, match = string.byte, string.sub, string.find, table.concat, string.match
local scan_object, decode_string, encode_string = scanner.scan_object, scanner.decode_string, scanner.encode_string
local load_context, PINNED = context.load_context, context.PINNED
local METADATA_NS, TRANSLATE_HEADER, FAILOVER_HEADER = context.METADATA_NS, context.TRANSLATE_HEADER,
  context.FAILOVER_HEADER
local record, reply, too_large, credential, endpoint_for = request.record, request.reply, request.too_large,
  request.credential, request.endpoint_for
local unknown_endpoint, missing_key, read_body = request.unknown_endpoint, request.missing_key, request.read_body
local prepare, set_headers = request.prepare, request.set_headers
local request_headers, client_key, TRANSLATORS = request.request_headers, request.client_key, request.TRANSLATORS
local usage_of, new_usage, new_usage_dropper, readable = usage.usage_of, usage.new_usage, usage.new_usage_dropper,
  usage.readable
local record_usage, record_news, media, first_chunk = usage.record_usage, usage.record_news, usage.media,
  usage.first_chunk

local preload = package.preload
local function optional(name) return preload[name] ~= nil and require(name) or nil end

-- Without llmc.failover in the bundle (no rule of this filter fails over), a failover context is a
-- compiler bug: refused, never forwarded.
local function no_failover(h, cfg)
  return reply(h, 503, "server_error", "failover_unsupported",
    "llmc: this rule fails over between providers, which this proxy's filter does not carry; nothing was sent",
    cfg and cfg.rule_id and cfg or nil)
end
-- `tries`: llmc.failover (the name `failover` is the route's failover mark below)
local tries = optional("llmc.failover") or {
  failover_unsupported = no_failover,
  failover_request = function(h, _, cfg) return no_failover(h, cfg) end,
  failover_accept = no_failover,
  on_attempt = function(h) return no_failover(h) end,
  on_attempt_response = function() end,
  failover_response = function() return false end,
}
-- llmc.keys (several keys per provider) only where a provider has several keys: a key-retry
-- context without it (a compiler bug) is refused like a failover one, nothing sent
local keys = optional("llmc.keys") or { on_attempt = no_failover }

-- The public surface: what tests, `llmc explain` and `llmc diff` call (each module is also tested alone).
local M = {
  scan_object = scan_object, rewrite = scanner.rewrite, shape = request.shape, decode_string = decode_string,
  encode_string = encode_string, assembly = scanner.assembly,
  prepare = context.prepare, pick = context.pick, api_key = context.api_key,
  request_headers = request_headers, client_key = client_key, endpoint_of = request.endpoint_of,
  usage_of = usage_of, new_usage = new_usage, new_usage_dropper = new_usage_dropper, readable = readable,
  TRANSLATORS = TRANSLATORS, failover = tries,
}
local values = optional("llmc.values")
if values ~= nil then M.decode, M.encode, M.NULL = values.decode, values.encode, values.NULL end

---------------------------------------------------------------------------------------------------
-- Request handling
---------------------------------------------------------------------------------------------------

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
  local b = context.pick(cfg, math.random())
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
-- rule and no model is configured: written back so duplicates collapse to the model that routed.
local function forward(h, vh, cfg, b, key, body, s, original_path, scanned, model_json, recorded)
  local endpoint, out, path, note = prepare(b, s, original_path, model_json, scanned)
  if endpoint == nil then
    if out == nil then return unknown_endpoint(h, cfg, b, original_path) end
    return reply(h, 400, "invalid_request_error", "invalid_json", "llmc: " .. out, cfg, b, path)
  end
  if #out > vh.buffer_limit then return too_large(h, cfg, b, b.max_body) end
  if out ~= s then body:setBytes(out) end
  set_headers(h:headers(), b, key, original_path, path) -- wrappers from before body() are out of scope now
  if recorded and note == nil then return end
  local md = h:streamInfo():dynamicMetadata() -- wrappers from before body() are out of scope now
  if not recorded then record(md, cfg, b, endpoint) end
  if note ~= nil then md:set(METADATA_NS, "translate", note) end -- the response path translates back
end

-- Which filter this Lua VM serves: Envoy gives every filter config its own VM per worker, so a VM
-- runs either the downstream filter or the router's upstream filter (failover tries), never both.
-- Set by every request; the response path of the same stream runs after it, in the same VM.
local upstream_vm = false

local on_model_request -- below: routing by the body's model

-- Every call into Envoy costs; this path makes as few as it can (see README, "Performance").
local function on_request(h)
  local vh = load_context(h)
  if vh == nil then return end
  upstream_vm = vh.upstream == true
  -- a try of a failover route (llmc.failover) or of a key-retry route (llmc.keys: the next key)
  if upstream_vm then return (vh.key_retry and keys or tries).on_attempt(h, vh) end
  if vh.body ~= nil then return on_model_request(h, vh) end
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
  if why == "failover" then return tries.failover_unsupported(h, cfg) end
  if b == nil then
    return reply(h, 500, "server_error", "llmc_route_mismatch",
      "llmc: the request was routed to an unexpected route; nothing was sent", cfg)
  end
  if cfg.failover then return tries.failover_request(h, vh, cfg, b, headers) end
  local original_path = headers:get(":path")
  -- recorded now, with this segment's stream info wrapper (after body() it would take a new one);
  -- llmc's own replies from here on record the same again
  record(info:dynamicMetadata(), cfg, b, endpoint_for(b, original_path))
  local declared = tonumber(headers:get("content-length") or "")
  if declared and declared > b.max_body then return too_large(h, cfg, b, b.max_body) end
  local key = credential(b, h)
  if key == false then return missing_key(h, cfg, b) end
  if key == nil and b.client_key then key = client_key(headers:get("authorization")) end
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
local function routable_field(s, members, name, limit)
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

M.routable_field = routable_field

-- " <pin> <pin> ... ": one weighted pick for every weighted rule of the virtual host; the pinned
-- routes of model-routed hosts match the rule's conditions and "the list holds my name".
local function picks(vh)
  local out = { " " }
  for i = 1, #vh.weighted do out[#out + 1] = context.pick(vh.weighted[i], math.random()).pin .. " " end
  return concat(out)
end

-- The filter reads the body before Envoy picks the rule: it exposes each body field rules match on
-- in its internal header (a client-sent value is overwritten or removed), picks a provider for every
-- weighted rule, and makes Envoy select the route once, before any other header changes (the first
-- h:metadata() after body() resolves the cleared route cache; see `reselect`). The route it lands
-- on names the rule, and for a weighted rule the provider too. One forced re-selection per request.
on_model_request = function(h, vh)
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
  local members, close = scan_object(s)
  if not members then return reply(h, 400, "invalid_request_error", "invalid_json", "llmc: " .. close) end
  headers = h:headers()
  local model, model_json
  for i = 1, #vh.body do
    local f = vh.body[i]
    local value, raw = routable_field(s, members, f.name, f.limit)
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
    -- each try is shaped by the router's upstream filter for its provider (llmc.failover)
    if failover ~= true then return tries.failover_unsupported(h, cfg) end
    return tries.failover_accept(h, cfg, b, s, model_json, { members, close }, original_path)
  end
  local key = credential(b, h)
  if key == false then return missing_key(h, cfg, b) end
  if key == nil and b.client_key then key = client_key(headers:get("authorization")) end
  if b.limit_model and model ~= nil then
    -- a token limit keyed by model reads it here, at the check and at the charge (the internal
    -- model header is gone by then)
    h:streamInfo():dynamicMetadata():set(METADATA_NS, "request_model", model)
  end
  return forward(h, vh, cfg, b, key, body, s, original_path, { members, close }, model_json)
end

---------------------------------------------------------------------------------------------------
-- Response
---------------------------------------------------------------------------------------------------

local MAX_BUFFERED_RESPONSE = 65536 -- a JSON response up to this size is read with body()

local on_response, on_usage_asked_response

-- A compressed answer despite `accept-encoding: identity` cannot be read (no zlib in Envoy's Lua):

-- A compressed answer despite `accept-encoding: identity` cannot be read (no zlib in Envoy's Lua):
-- an OpenAI error without content-encoding, 502 or the error's own status (README, "Answers llmc
-- cannot translate").
local function compressed_answer(h, headers, status, encoding, sse)
  local answer = status >= 400 and status or 502
  -- only translated answers get here, so llmc.values (its table of error types by status) is loaded
  local etype = status >= 400 and (values and values.ERROR_TYPES[status] or "api_error") or "server_error"
  local err = '{"error":{"message":' .. encode_string("llmc: the provider answered " .. tostring(status) ..
    " compressed (content-encoding: " .. encoding .. "), which llmc cannot translate") .. ',"type":' ..
    encode_string(etype) .. ',"param":null,"code":"llmc_compressed_answer"}}'
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

-- Runs instead of the usage reader when the request was translated (its note, from the translator's
-- request() through dynamic metadata, names the format: `t` is TRANSLATORS[format]). A stream is rewritten event by event as its chunks pass: Content-Length is
-- dropped first (the length changes; Envoy sends the answer chunked), then every chunk's bytes are
-- replaced by the OpenAI events of the provider's events it completes (tests/test_anthropic_e2e.py
-- proves this on Envoy 1.37-1.39; README, "Providers", has the fallback). Any other answer is a
-- JSON body, small (one message, or an error): read whole with body(true) (wrapped even when
-- empty, so an empty 529 gets a body), translated, replaced; an untranslatable 2xx becomes 502.
local function on_translated_response(h, t, include_usage)
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
    local st = t.stream(include_usage, created)
    local seen, usage, first = {}, st.usage, true
    for chunk in h:bodyChunks() do
      local n = chunk:length()
      if first and n > 0 then
        first = false
        first_chunk(h)
      end
      if n > 0 and not st.failed then
        chunk:setBytes(st.feed(chunk:getBytes(0, n)))
        -- the translator replaces its usage table when the usage changed; recorded then (record_news)
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
  local out, p, c, tot, model, answer, x = t.response(n > 0 and body:getBytes(0, n) or "", status, created)
  body:setBytes(out)
  if answer ~= status then h:headers():replace(":status", tostring(answer)) end
  record_usage(h, p, c, tot, model, x)
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
on_response = function(h, headers, tried)
  if headers:get(TRANSLATE_HEADER) ~= nil then
    -- The route's mark (or on a failover rule the upstream filter's), never the client's business;
    -- the request's own note decides (a provider cannot fake one: the route overwrites the header
    -- and the upstream filter sets or removes it, and the note comes from the request path), or
    -- `tried`: the note of the failover try that answered (llmc.failover, failover_response).
    headers:remove(TRANSLATE_HEADER)
    local note = tried
    if note == nil then
      local shaped = h:streamInfo():dynamicMetadata():get(METADATA_NS)
      note = shaped and shaped.translate
    end
    if note ~= nil then
      -- "<format>" or "<format>+usage"; OpenAI's own format is never translated back: its note
      -- "openai+usage" means llmc asked for the usage event, which the client must not see
      local fmt, plus = match(note, "^([^+]*)(.*)$")
      local t = TRANSLATORS[fmt]
      if t then return on_translated_response(h, t, plus == "+usage") end
      if plus == "+usage" then return on_usage_asked_response(h, headers) end
    end
  end
  local status = headers:get(":status")
  local kind = readable(status, headers:get("content-type"))
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
      if n > 0 then record_usage(h, usage_of(body:getBytes(0, n), true)) end
      return
    end
  end
  local u = new_usage(kind == "sse")
  if kind == "sse" then
    local seen = {}
    for chunk in h:bodyChunks() do
      local n = chunk:length()
      if n > 0 then
        if seen.first == nil then
          seen.first = true
          first_chunk(h)
        end
        u.feed(chunk:getBytes(0, n))
        record_news(h, seen, u.prompt, u.completion, u.total, u.model, u)
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

-- The response of a stream llmc asked usage for (M.shape's note "openai+usage"): usage recorded
-- as usual, the usage event dropped. Any other answer (an error, JSON) is read as usual.
on_usage_asked_response = function(h, headers)
  local status = headers:get(":status")
  if readable(status, headers:get("content-type")) ~= "sse" then return on_response(h, headers) end
  local u, d, seen = new_usage(true), new_usage_dropper(), {}
  for chunk in h:bodyChunks() do
    local n = chunk:length()
    if n > 0 then
      if seen.first == nil then
        seen.first = true
        first_chunk(h)
      end
      local bytes = chunk:getBytes(0, n)
      u.feed(bytes)
      record_news(h, seen, u.prompt, u.completion, u.total, u.model, u)
      local out = d.feed(bytes)
      if out ~= bytes then chunk:setBytes(out) end
    end
  end
end

-- The upstream filter (failover) and this filter run the same bundle, in VMs of their own
-- (`upstream_vm`). Downstream, only the routes of failover rules add FAILOVER_HEADER; every other
-- response goes straight to the usage reader, with no call into Envoy before the headers.
local function respond(h)
  if upstream_vm then return tries.on_attempt_response(h) end
  local headers = h:headers()
  if headers:get(FAILOVER_HEADER) ~= nil then
    headers:remove(FAILOVER_HEADER) -- the route's mark, never the client's business
    local replaced, note = tries.failover_response(h, headers)
    if replaced then return end
    return on_response(h, headers, note)
  end
  return on_response(h, headers)
end

function envoy_on_response(h)
  local ok, err = pcall(respond, h)
  if not ok then
    -- Accounting never breaks a response: the body has already gone on chunk by chunk.
    h:logErr("llmc: internal error while reading usage: " .. tostring(err))
  end
end

function envoy_on_request(h)
  local ok, err = pcall(on_request, h)
  if not ok then
    -- Errors raised here never carry request data or keys: only llmc's own messages.
    h:logErr("llmc: internal error: " .. tostring(err))
    reply(h, 500, "server_error", "llmc_internal_error", "llmc: internal error while shaping the request")
  end
end

math.randomseed(os.time() + (tonumber((tostring({}):match("0x(%x+)")) or "0", 16) or 0) % 1000003)

M.on_request, M.on_model_request, M.on_response, M.on_usage_asked_response = on_request, on_model_request,
  on_response, on_usage_asked_response

return M
