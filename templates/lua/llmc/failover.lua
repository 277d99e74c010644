-- llmc.failover: retries that move to another provider (Istio >= 1.31, Envoy >= 1.39). In a
-- filter's bundle only when one of its rules fails over (compiler/luabundle.py).
--
-- A failover rule routes through pinned routes like a weighted one, but the pinned route sends to
-- every backend of the rule as weighted clusters in failover order, with `refresh_cluster_on_retry`
-- and the random value taken from the internal header x-llmc-order, set to "0": the first try goes
-- to the first cluster (the backend this filter picked by weight among the first priority), and
-- each retry to the next cluster not tried yet (Envoy zeroes the weight of tried clusters). Those
-- route fields come from an EnvoyFilter patch pinned to Istio >= 1.31 proxies, which also marks
-- the route (metadata `failover: true`); a proxy without that patch gets an error, never a request
-- that could reach a provider other than the one it was shaped for.
--
-- This (downstream) filter runs once per request, so here it validates the request, picks the first
-- backend, pins the route and (a body up to KEEP_CLIENT_BODY) shapes the first try as a plain rule's
-- request is shaped, keeping the client's body for later tries. Every other try is shaped by the upstream
-- filter (the same modules, entry point M.on_attempt below, selected by its filter context): one
-- Lua filter in the router's upstream_http_filters, shared by every provider cluster, which picks
-- the try's provider from the route's list by Envoy's attempt count. It shapes the original client
-- body, which Envoy keeps for retries, through the same request step as every other request
-- (llmc.request's prepare and set_headers).
--
-- Protocols may mix (issue 27): the upstream filter marks the answer of its try with the try's body
-- format (x-llmc-translate, set or removed on every answer, so a provider's own never counts), and
-- this filter translates it back with that format's translator; the mark never reaches the client.

local request = require("llmc.request")
local context = require("llmc.context")

local METADATA_NS, ANSWERED_BY, TRANSLATE_HEADER = context.METADATA_NS, context.ANSWERED_BY,
  context.TRANSLATE_HEADER
local ATTEMPT_COUNT = "x-envoy-attempt-count"
local match = string.match
local prepare, set_headers, encode_string = request.prepare, request.set_headers, require("llmc.scanner").encode_string

-- llmc.keys is in the bundle only where a provider has several keys (compiler/luabundle.py), so
-- it is looked up, not required by name (as llmc.context does)
local KEYS_MODULE = "llmc.keys"
local keys = package.preload[KEYS_MODULE] and require(KEYS_MODULE)
-- An answer with this header is never retried by Envoy's router unless the retry policy names
-- envoy-ratelimited, which llmc's never does (Envoy's RetryStateImpl::wouldRetryFromHeaders; it
-- once held for x-envoy-overloaded too, no longer: tested on Envoy 1.39.3)
local FINAL = "x-envoy-ratelimited"
-- how every error llmc answers itself begins (llmc.request's reply)
local OWN_ERROR = '{"error":{"message":"llmc: '

local M = {}

function M.failover_unsupported(h, cfg)
  h:logErr("llmc: rule " .. cfg.rule_id .. " needs failover, which this proxy was not configured for")
  return request.reply(h, 503, "server_error", "failover_unsupported",
    "llmc: this rule fails over between providers, which needs Istio 1.31 or newer on this proxy; " ..
    "nothing was sent", cfg)
end

function M.failover_request(h, vh, cfg, b, headers)
  local declared = tonumber(headers:get("content-length") or "")
  if declared and declared > b.max_body then return request.too_large(h, cfg, b, b.max_body) end
  local original_path = headers:get(":path")
  local body, s = request.read_body(h, cfg, b, b.max_body)
  if body == nil then return end
  return M.failover_accept(h, cfg, b, s, nil, nil, original_path)
end

-- A failover request whose route was checked: the endpoint and the body are validated here for the
-- first choice and for a later try of each body format no first choice speaks (cfg.later), so no
-- try is ever sent a body its provider cannot take (the first choice's result is the first try's
-- request, see KEEP_CLIENT_BODY; later tries shape the client's body again) and the request
-- recorded for the access log. Every provider of a failover
-- rule sets basePath or none (LLMC235), so the first choice's endpoint is every try's. What each try
-- needs of the client's request and the header map no longer holds once a try changed it -- the
-- client's path, the model that routed it -- goes into the stream's dynamic metadata, which the
-- upstream filter reads (Envoy hands upstream filters the downstream stream info); so does whether
-- the client asked a stream's usage (a translated answer ends with OpenAI's usage event then).
local function validate(h, cfg, b, s, model_json, scanned, original_path)
  local endpoint, out, param, note = prepare(b, s, original_path, model_json, scanned)
  if endpoint == nil then
    if out == nil then return nil, request.unknown_endpoint(h, cfg, b, original_path) end
    return nil, request.reply(h, 400, "invalid_request_error", "invalid_json", "llmc: " .. out, cfg, b, param)
  end
  return note ~= nil and note:sub(-6) == "+usage", out, param, endpoint -- (param: the path on success)
end

-- The first try is shaped here, as a plain rule's request is, when the client's body is at most this
-- large: the client's body then waits for later tries in the stream's metadata (namespace
-- BODY_NS, apart from the access log's `llmc`), and the upstream filter leaves the first try as
-- it is. A larger body stays in the router as the client sent it, and every try is shaped upstream.
local KEEP_CLIENT_BODY = 65536
local BODY_NS = "llmc.failover"

function M.failover_accept(h, cfg, b, s, model_json, scanned, original_path)
  local usage, first, first_path, endpoint = validate(h, cfg, b, s, model_json, scanned, original_path)
  if usage == nil then return first end
  local replied
  for i = 1, #(cfg.later or {}) do
    local later_usage
    later_usage, replied = validate(h, cfg, cfg.later[i], s, model_json, scanned, original_path)
    if later_usage == nil then return replied end
    usage = usage or later_usage
  end
  local key = request.credential(b, h)
  local shape_first = #s <= KEEP_CLIENT_BODY and #first <= KEEP_CLIENT_BODY and key ~= false
  if shape_first and first ~= s then h:body():setBytes(first) end -- before the wrappers below
  local md = h:streamInfo():dynamicMetadata()
  if usage then md:set(METADATA_NS, "translate_usage", true) end
  if shape_first then
    md:set(BODY_NS, "client_body", s)
    md:set(METADATA_NS, "first_shaped", true)
    set_headers(h:headers(), b, key, original_path, first_path)
  end
  md:set(METADATA_NS, "rule", cfg.rule_id)
  md:set(METADATA_NS, "first_provider", b.provider)
  md:set(METADATA_NS, "failover", true)
  md:set(METADATA_NS, "client_path", original_path or "/")
  if model_json ~= nil then md:set(METADATA_NS, "routed_model", model_json) end
  local operation = request.OPERATIONS[endpoint] -- every try's (gen_ai.operation.name; chat: none)
  if operation ~= nil then md:set(METADATA_NS, "operation", operation) end
end

-- The fixed headers of every try's protocol (e.g. anthropic-version), once per prepared context: a
-- later try of another protocol removes what an earlier one set (the tries share the header map).
-- Here, not in llmc.context, so that only failover bundles carry it.
local function fixed_headers(a)
  local fixed, seen = {}, {}
  for i = 1, #a.tries do
    for _, pair in ipairs(a.tries[i].headers) do
      if not seen[pair[1]] then fixed[#fixed + 1], seen[pair[1]] = pair[1], true end
    end
  end
  table.sort(fixed)
  a.fixed_headers = fixed
  return fixed
end

-- The next key before the next provider (docs/failover.md): on a rule whose backends retry with
-- their next key (retryKeysOn), such a backend owns one try per key, consecutive, each a cluster of
-- its own (a DestinationRule subset: Envoy never returns to a cluster already tried), and
-- `a.slots[n]` names the backend of try n. A backend's first try uses the key keySelection
-- chooses; each later one the next key the request has not used (llmc.keys): a key that failed is
-- never sent again. Returns the key, or false (none readable: sent without one, refused).
local function slot_key(h, a, b, n, i, tmd, mine)
  if n == 1 or a.slots[n - 1] ~= i then
    local key = request.credential(b, h) -- by keySelection (llmc.keys records llmc:api_key_id)
    if b.keys ~= nil then
      tmd:set(METADATA_NS, "keys_tried", "," .. tostring((tmd:get(METADATA_NS) or {}).api_key_id) .. ",")
    end
    return key
  end
  local key, id, tried = keys.next_unused(b.keys, mine.keys_tried or ",", h, b.provider)
  tmd:set(METADATA_NS, "keys_tried", tried)
  if id ~= nil then tmd:set(METADATA_NS, "api_key_id", id) end
  return key or false
end

-- One try, in the upstream filter of the provider's cluster: shapes the original client body and
-- the headers for this provider, through the same step as the request path (llmc.request's prepare
-- and set_headers). The header map is shared by all tries and keeps what an earlier
-- try set, so everything a try depends on is set or removed here: every credential header any
-- backend of the rule uses (a key set for another provider by an earlier try never reaches this
-- one; the client's own never passes on a failover rule), the internal headers, the path (from the
-- client's, kept in the dynamic metadata), Content-Length (Envoy keeps the client's body for each
-- try, but the length an earlier try's setBytes wrote stays in the map), and Host. `a` is the
-- prepared context (llmc.context, prepare_attempt).
function M.on_attempt(h, a)
  local headers = h:headers()
  -- which try this is: Envoy's attempt count (1 for the first), set on every try of a virtual host
  -- with include_request_attempt_count (Istio's default; llmc's patch sets it on failover hosts)
  local n = tonumber(headers:get(ATTEMPT_COUNT) or "")
  local slots = a.slots
  local i = n
  if slots ~= nil then i = n and slots[n] end
  local b = i and a.tries[i]
  if b == nil then
    h:logErr("llmc: try " .. tostring(n) .. " of rule " .. a.rule_id .. " has no provider")
    return request.reply(h, 503, "server_error", "failover_unknown_try",
      "llmc: this proxy cannot tell which provider this try goes to; nothing was sent")
  end
  local tmd = h:streamInfo():dynamicMetadata()
  tmd:set(METADATA_NS, "try_provider", b.provider)
  tmd:set(METADATA_NS, "try_gen_ai_provider", b.gen_ai_provider)
  -- the try's body format: the answer is marked with it for the downstream filter (set on every
  -- try: the stream info, and so an earlier try's value, is shared by the tries)
  tmd:set(METADATA_NS, "try_format", b.format)
  local mine = tmd:get(METADATA_NS) or {} -- the same wrapper: nothing yielded since (body() does)
  local key
  if slots ~= nil then
    tmd:set(METADATA_NS, "try_slot", n)
    key = slot_key(h, a, b, n, i, tmd, mine)
  else
    key = request.credential(b, h)
  end
  if b.keys == nil and mine.api_key_id ~= nil then
    tmd:set(METADATA_NS, "api_key_id", nil) -- an earlier try's key id: this provider has one key
  end
  if key == false then
    h:logErr("llmc: API key file for provider " .. b.provider .. " is missing or empty")
    key = nil -- sent without a key: the provider refuses it, and the next try moves on
  end
  if n == 1 and mine.first_shaped then
    -- shaped by the downstream filter (failover_accept) as a plain rule's request; a failover
    -- route removes every credential and internal header after it (compiler: virtualservice
    -- _failover), so the key is set again here, after the router
    if key ~= nil then headers:replace(b.auth_header, b.auth_prefix .. key) end
    headers:replace(":authority", b.authority)
    return
  end
  for i = 1, #a.credential_headers do headers:remove(a.credential_headers[i]) end
  for i = 1, #a.internal_headers do headers:remove(a.internal_headers[i]) end
  local fixed = a.fixed_headers or fixed_headers(a)
  for i = 1, #fixed do headers:remove(fixed[i]) end -- an earlier try's protocol's (anthropic-version)
  local original_path = mine.client_path or headers:get(":path")
  -- the client's body: kept in the metadata when the downstream filter shaped the first try (the
  -- router holds that try's body then), else the router's copy as the client sent it
  local kept = mine.first_shaped and (tmd:get(BODY_NS) or {}).client_body or nil
  local body = h:body()
  local s = kept or body:getBytes(0, body:length())
  -- the downstream filter validated the request for this try (failover_accept, cfg.later); should the
  -- step refuse it still, the try is answered as a plain rule would be, never sent as the client wrote it
  local endpoint, out, path = prepare(b, s, original_path, mine.routed_model)
  if endpoint == nil then
    if out == nil then return request.unknown_endpoint(h, nil, nil, original_path) end
    return request.reply(h, 400, "invalid_request_error", "invalid_json", "llmc: " .. out, nil, nil, path)
  end
  if kept ~= nil or out ~= s then body:setBytes(out) end
  headers = h:headers()
  set_headers(headers, b, key, original_path, path)
  headers:replace("content-length", tostring(#out))
  -- the try's Host (its hostRewrite): Envoy applies a weighted cluster's host rewrite to the first try only
  headers:replace(":authority", b.authority)
end

-- The answer `status` of try `n` on a rule with key slots (docs/failover.md, the decision table):
-- Envoy's retry policy retries the union of the rule's retryOn and every backend's retryKeysOn, and
-- its next try is always the next slot (the backend's next key, else the next provider). This
-- filter keeps the retries the table allows -- one of the backend's key statuses while it has a key
-- left, a failure the rule's retryOn names -- and marks every other answer Envoy would retry as
-- final (FINAL, which Envoy's router never retries; the downstream filter removes it).
-- So a key status from a backend's last key reaches the next provider only when retryOn allows it.
local function slot_answer(a, headers, status, n, tmd)
  local slots = a.slots
  if status < 400 or slots[n + 1] == nil then return end
  local b = a.tries[slots[n]]
  if (a.retry_5xx and status >= 500) or a.rule_statuses[status] then return end
  if slots[n + 1] == slots[n] and b.key_retry ~= nil and b.key_retry[status] then return end
  if a.retriable[status] then
    headers:replace(FINAL, "true")
    tmd:set(METADATA_NS, "final", true)
  end
end

-- The mark of the try that answered: its provider, and its body format when that is translated (a
-- format a provider sent itself is removed: only this filter's mark counts).
function M.on_attempt_response(h)
  local tmd = h:streamInfo():dynamicMetadata()
  local mine = tmd:get(METADATA_NS)
  local by = mine and mine.try_provider
  if by == nil then return end
  local headers = h:headers()
  local n = mine.try_slot
  if n ~= nil then -- a rule with key slots (M.on_attempt set it)
    local a = context.load_context(h)
    if a ~= nil and a.slots ~= nil then
      slot_answer(a, headers, tonumber(headers:get(":status") or "") or 0, n, tmd)
    end
  end
  -- "<provider> <gen_ai.provider.name>" (a provider name is a DNS label: no space in it)
  headers:replace(ANSWERED_BY, by .. " " .. (mine.try_gen_ai_provider or by))
  local fmt = mine.try_format
  if fmt ~= nil and fmt ~= "openai" then headers:replace(TRANSLATE_HEADER, fmt)
  else headers:remove(TRANSLATE_HEADER) end
end

-- Downstream, on a failover request's response (its route added FAILOVER_HEADER, which the caller
-- removed): the provider that answered (from the upstream filter's header, which the client never
-- sees) goes into the access log as llmc:provider, its gen_ai.provider.name as llmc:gen_ai_provider. No such header means Envoy answered itself
-- (every try reset or timed out; the route's response headers apply to the router's own replies
-- too): the client gets that error in OpenAI's format. Returns true when it replaced the response;
-- else false and, for a translated try's answer, its note for the response path ("<format>", or
-- "<format>+usage": failover_accept's `translate_usage`).
function M.failover_response(h, headers)
  local md = h:streamInfo():dynamicMetadata()
  local mine = md:get(METADATA_NS)
  if mine == nil or mine.failover ~= true then return false end
  local answered = headers:get(ANSWERED_BY)
  if answered ~= nil then
    headers:remove(ANSWERED_BY)
    if mine.final then headers:remove(FINAL) end -- the upstream filter's mark (slot_answer)
    local by, gen_ai = match(answered, "^(%S+) ?(%S*)")
    by = by or answered
    md:set(METADATA_NS, "provider", by)
    md:set(METADATA_NS, "gen_ai_provider", gen_ai ~= nil and gen_ai ~= "" and gen_ai or by)
    if by ~= mine.first_provider then
      -- stat http.<listener>.lua.llmc.failovers.<rule>.<provider>: requests a backup answered
      h:stats():counter("failovers." .. (mine.rule or ""):gsub("[^%w_-]", "_") .. "." .. by):add(1)
    end
    local fmt = headers:get(TRANSLATE_HEADER)
    if fmt == nil then return false end
    return false, fmt .. (mine.translate_usage and "+usage" or "")
  end
  local status = tonumber(headers:get(":status") or "") or 502
  if status < 400 then return false end
  local body = h:body()
  local detail = body and body:length() > 0 and body:getBytes(0, body:length()) or ""
  -- llmc's own OpenAI-format error, from a try's filter (M.on_attempt): the client gets it as it is
  if detail:sub(1, #OWN_ERROR) == OWN_ERROR then return true end
  body:setBytes('{"error":{"message":' .. encode_string("llmc: no provider answered (" .. detail .. ")") ..
    ',"type":"server_error","param":null,"code":"upstream_unavailable"}}')
  headers = h:headers()
  headers:replace("content-type", "application/json")
  return true
end

return M
