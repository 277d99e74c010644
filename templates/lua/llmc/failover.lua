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
-- This (downstream) filter runs once per request, so here it only validates the request, picks the
-- first backend and pins the route; it does not shape anything. Each try is shaped by the upstream
-- filter (the same modules, entry point M.on_attempt below, selected by its filter context): one
-- Lua filter in the router's upstream_http_filters, shared by every provider cluster, which picks
-- the try's provider from the route's list by Envoy's attempt count. It shapes the original client
-- body, which Envoy keeps for retries.

local request = require("llmc.request")
local context = require("llmc.context")

local METADATA_NS, ANSWERED_BY = context.METADATA_NS, context.ANSWERED_BY
local ATTEMPT_COUNT = "x-envoy-attempt-count"
local match = string.match
local endpoint_for, body_for, encode_string = request.endpoint_for, request.body_for,
  require("llmc.scanner").encode_string

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

-- A failover request whose route was checked: the endpoint and the body are validated once here
-- (each try shapes the same body; the result is not kept) and the request recorded for the access
-- log. Every provider of a failover rule sets basePath or none (LLMC235), so the first choice's
-- endpoint is every try's. What each try needs of the client's request and the header map no longer
-- holds once a try changed it -- the client's path, the model that routed it -- goes into the
-- stream's dynamic metadata, which the upstream filter reads (Envoy hands upstream filters the
-- downstream stream info).
function M.failover_accept(h, cfg, b, s, model_json, scanned, original_path)
  local endpoint = endpoint_for(b, original_path)
  if endpoint == nil then return request.unknown_endpoint(h, cfg, b, original_path) end
  local out, err, param = body_for(endpoint, s, b, model_json, scanned)
  if out == nil then
    return request.reply(h, 400, "invalid_request_error", "invalid_json", "llmc: " .. err, cfg, b, param)
  end
  local md = h:streamInfo():dynamicMetadata()
  md:set(METADATA_NS, "rule", cfg.rule_id)
  md:set(METADATA_NS, "first_provider", b.provider)
  md:set(METADATA_NS, "failover", true)
  md:set(METADATA_NS, "client_path", original_path or "/")
  if model_json ~= nil then md:set(METADATA_NS, "routed_model", model_json) end
  local operation = request.OPERATIONS[endpoint] -- every try's (gen_ai.operation.name; chat: none)
  if operation ~= nil then md:set(METADATA_NS, "operation", operation) end
end

-- One try, in the upstream filter of the provider's cluster: shapes the original client body and
-- the headers for this provider, through the same steps as the request path (endpoint_for,
-- body_for, M.request_headers). The header map is shared by all tries and keeps what an earlier
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
  local b = n and a.tries[n]
  if b == nil then
    h:logErr("llmc: try " .. tostring(n) .. " of rule " .. a.rule_id .. " has no provider")
    return request.reply(h, 503, "server_error", "failover_unknown_try",
      "llmc: this proxy cannot tell which provider this try goes to; nothing was sent")
  end
  local md = h:streamInfo():dynamicMetadata()
  md:set(METADATA_NS, "try_provider", b.provider)
  md:set(METADATA_NS, "try_gen_ai_provider", b.gen_ai_provider)
  for i = 1, #a.credential_headers do headers:remove(a.credential_headers[i]) end
  for i = 1, #a.internal_headers do headers:remove(a.internal_headers[i]) end
  local key = request.credential(b, h)
  if key == false then
    h:logErr("llmc: API key file for provider " .. b.provider .. " is missing or empty")
    key = nil -- sent without a key: the provider refuses it, and the next try moves on
  end
  local mine = h:streamInfo():dynamicMetadata():get(METADATA_NS) or {}
  local original_path = mine.client_path or headers:get(":path")
  local endpoint = endpoint_for(b, original_path) or "chat" -- validated by the downstream filter
  local path = b.path
  if endpoint ~= "chat" then path = b.base_path .. "/" .. endpoint .. b.base_query end
  local body = h:body()
  local s = body:getBytes(0, body:length())
  local out = body_for(endpoint, s, b, mine.routed_model) or s -- validated by the downstream filter
  if out ~= s then body:setBytes(out) end
  headers = h:headers()
  local set = request.request_headers(b, key, original_path, path)
  for i = 1, #set do
    local v = set[i][2]
    if v then headers:replace(set[i][1], v) else headers:remove(set[i][1]) end
  end
  headers:replace("content-length", tostring(#out))
  -- the try's Host (its hostRewrite): Envoy applies a weighted cluster's host rewrite to the first try only
  headers:replace(":authority", b.authority)
end

function M.on_attempt_response(h)
  local mine = h:streamInfo():dynamicMetadata():get(METADATA_NS)
  local by = mine and mine.try_provider
  -- "<provider> <gen_ai.provider.name>" (a provider name is a DNS label: no space in it)
  if by ~= nil then h:headers():replace(ANSWERED_BY, by .. " " .. (mine.try_gen_ai_provider or by)) end
end

-- Downstream, on a failover request's response (its route added FAILOVER_HEADER, which the caller
-- removed): the provider that answered (from the upstream filter's header, which the client never
-- sees) goes into the access log as llmc:provider, its gen_ai.provider.name as llmc:gen_ai_provider. No such header means Envoy answered itself
-- (every try reset or timed out; the route's response headers apply to the router's own replies
-- too): the client gets that error in OpenAI's format. Returns true when it replaced the response.
function M.failover_response(h, headers)
  local md = h:streamInfo():dynamicMetadata()
  local mine = md:get(METADATA_NS)
  if mine == nil or mine.failover ~= true then return false end
  local answered = headers:get(ANSWERED_BY)
  if answered ~= nil then
    headers:remove(ANSWERED_BY)
    local by, gen_ai = match(answered, "^(%S+) ?(%S*)")
    by = by or answered
    md:set(METADATA_NS, "provider", by)
    md:set(METADATA_NS, "gen_ai_provider", gen_ai ~= nil and gen_ai ~= "" and gen_ai or by)
    if by ~= mine.first_provider then
      -- stat http.<listener>.lua.llmc.failovers.<rule>.<provider>: requests a backup answered
      h:stats():counter("failovers." .. (mine.rule or ""):gsub("[^%w_-]", "_") .. "." .. by):add(1)
    end
    return false
  end
  local status = tonumber(headers:get(":status") or "") or 502
  if status < 400 then return false end
  local body = h:body()
  local detail = body and body:length() > 0 and body:getBytes(0, body:length()) or ""
  body:setBytes('{"error":{"message":' .. encode_string("llmc: no provider answered (" .. detail .. ")") ..
    ',"type":"server_error","param":null,"code":"upstream_unavailable"}}')
  headers = h:headers()
  headers:replace("content-type", "application/json")
  return true
end

return M
