-- llmc.context: the filter's configuration. Per-virtual-host data arrives as the route's
-- filter_context (compiler/translate/envoyfilter.py, lua_context; a protobuf Struct, so it is data,
-- never code); this module prepares it once per id and worker (M.load_context, M.prepare), picks a
-- backend by weight (M.pick) and reads API keys (M.api_key). It also holds the names this program
-- shares with the compiler (compiler/names.py, compiler/telemetry.py; tests compare them).
--
-- M.pick and M.api_key are called through this table (`context.pick(...)`), never localised:
-- `llmc explain` replaces them here (a forced provider; a key file is never read).

local encode_string = require("llmc.scanner").encode_string
-- llmc.keys is in a filter's bundle only where a provider has several keys (compiler/luabundle.py),
-- so it is looked up, not required by name; without it a backend with keys gets NO_KEYS, whose
-- credential is missing (503 api_key_unavailable), never sent without a key
local K = "llmc.keys"
local keys_module = package.preload[K] and require(K)
local NO_KEYS = { use = function() return false end }

local METADATA_NS = "llmc"
local TRANSLATE_HEADER = "x-llmc-translate" -- compiler/names.py: added by routes of translated providers
local FAILOVER_HEADER = "x-llmc-failover" -- compiler/names.py: added by the pinned routes of failover rules
local ANSWERED_BY = "x-llmc-answered-by" -- response header: upstream filter -> downstream filter (failover)
local KEY_TTL_SECONDS = 1
local MAX_CACHED_CONTEXTS = 512
local GC_STEP = 256 -- collectgarbage("step") size after preparing a context
local collect = collectgarbage

local M = { METADATA_NS = METADATA_NS, TRANSLATE_HEADER = TRANSLATE_HEADER, FAILOVER_HEADER = FAILOVER_HEADER,
  ANSWERED_BY = ANSWERED_BY }

-- Prepares one rule: its backends with pre-encoded body fields, cumulative weights, and the
-- record of the provider API each speaks (`protocols`: auth header and prefix, fixed headers).
local prepare_rule
prepare_rule = function(route, name, rule, protocols)
  local cfg = { rule_id = route .. "/" .. name, backends = {}, total = 0 }
  for i, b in ipairs(rule.backends) do
    local proto = protocols[b.protocol]
    cfg.total = cfg.total + b.weight
    -- the protocol's fixed headers, then the backend's own (e.g. anthropic-version), sorted
    local merged, headers = {}, {}
    for k, v in pairs(proto.headers or {}) do merged[k] = v end
    for k, v in pairs(b.headers or {}) do merged[k] = v end
    for k, v in pairs(merged) do headers[#headers + 1] = { k, v } end
    table.sort(headers, function(x, y) return x[1] < y[1] end)
    local auth_header = b.auth_header or proto.auth_header
    cfg.backends[i] = { provider = b.provider, gen_ai_provider = b.gen_ai_provider or b.provider, path = b.path,
      model = b.model, weight = b.weight,
      upto = cfg.total, max_body = b.max_body, api_key = b.api_key, api_key_file = b.api_key_file,
      keys = b.keys and (keys_module and keys_module.prepare(b, M) or NO_KEYS), -- several keys (llmc.keys)
      model_json = b.model ~= nil and encode_string(b.model) or nil, stream = b.stream,
      include_usage = b.include_usage, limit_usage = b.limit_usage, limit_model = b.limit_model, pin = b.pin, base_path = b.base_path, base_query = b.base_query or "",
      format = proto.format or "openai",
      max_tokens = b.max_tokens, client_key = proto.client_key == true,
      auth_header = auth_header, auth_prefix = b.auth_prefix or proto.auth_prefix, headers = headers,
      -- a key sent in another header replaces the client's credential: the client's own
      -- Authorization (its key for llmc, or for another provider) never reaches this provider
      drop_authorization = auth_header ~= "authorization" }
  end
  cfg.failover = rule.failover == true
  cfg.weighted = #cfg.backends > 1 or cfg.failover
  if rule.later ~= nil then
    -- a failover rule's later tries of a body format no first choice speaks (no keys): the request
    -- is validated for each before the first try is sent (llmc.failover)
    cfg.later = prepare_rule(route, name, { backends = rule.later }, protocols).backends
  end
  return cfg
end

-- The prepared rule of a pinned route: reached only through the internal routing header.
local PINNED = { pinned = true }
M.PINNED = PINNED

-- Prepares a virtual host's filter_context (read through `get`) once per id and worker:
-- returns {by_route = {route name -> prepared rule, or PINNED}, pin_header, buffer_limit}.
local function prepare(get)
  local route, rules, by_route, protocols = get("route"), {}, {}, get("protocols")
  local pinned, weighted, names = {}, {}, {}
  local all = get("rules")
  for name in pairs(all) do names[#names + 1] = name end
  table.sort(names)
  for _, name in ipairs(names) do
    local cfg = prepare_rule(route, name, all[name], protocols)
    rules[name] = cfg
    if cfg.weighted then weighted[#weighted + 1] = cfg end
    for _, b in ipairs(cfg.backends) do
      if b.pin ~= nil then
        by_route[b.pin] = PINNED
        pinned[b.pin] = { cfg, b }
      end
    end
  end
  local failover = false
  for _, cfg in pairs(rules) do failover = failover or cfg.failover end
  for route_name, rule_name in pairs(get("routes")) do by_route[route_name] = rules[rule_name] end
  -- the body fields rules match on: `body_fields`, or the model alone; each `<f>_header`, `<f>_limit`
  local fields, body = get("body_fields") or (get("model_header") and { "model" }), nil
  for i, f in ipairs(fields or {}) do
    body = body or {}
    body[i] = { name = f, header = get(f .. "_header"), limit = get(f .. "_limit") }
  end
  return { by_route = by_route, pinned = pinned, weighted = weighted, pin_header = get("pin_header"),
    failover = failover, body = body,
    buffer_limit = get("buffer_limit"), max_body = get("max_body"),
    nomatch = get("nomatch"), order_header = get("order_header") }
end

M.prepare = prepare

local contexts, ncontexts = {}, 0

-- The upstream filter's context (llmc.failover, "Failover"): the backend of each try of one pinned
-- route in the order Envoy takes them (`tries`; each with the Host of its try), the protocols, and
-- every credential header any protocol uses.
local function prepare_attempt(ctx)
  local tries = ctx:get("tries")
  local rule = prepare_rule(ctx:get("route"), ctx:get("rule"), { backends = tries }, ctx:get("protocols"))
  for i = 1, #tries do rule.backends[i].authority = tries[i].authority end
  local a = { attempt = true, upstream = true, tries = rule.backends, rule_id = rule.rule_id,
    credential_headers = ctx:get("credential_headers"), internal_headers = ctx:get("internal_headers") }
  local slots = ctx:get("slots")
  if slots ~= nil then
    -- the next key before the next provider (llmc.failover): each try's backend, the statuses each
    -- backend retries with its next key, and every status Envoy's retry policy retries (the union)
    local retry_on = ctx:get("retry_on")
    local rule_statuses, retriable = {}, {}
    for _, s in ipairs(retry_on.statuses) do rule_statuses[s], retriable[s] = true, true end
    for i = 1, #tries do
      if tries[i].key_retry ~= nil then
        local set = {}
        for _, s in ipairs(tries[i].key_retry) do set[s], retriable[s] = true, true end
        rule.backends[i].key_retry = set
      end
    end
    a.slots, a.retry_5xx, a.rule_statuses, a.retriable = slots, retry_on["5xx"] == true, rule_statuses, retriable
  end
  return a
end

-- The prepared context of this route: a virtual host's ({by_route = ...}), or in the upstream
-- filter the tries of one pinned route (failover: {attempt = true, tries = ...}) or a key-retry
-- route's backend ({key_retry = true, ...}; both `upstream = true`); nil when the route carries no
-- llmc context at all (not our traffic). Two calls into Envoy per request (filterContext, get
-- "id"); the rest is read once per id and worker.
function M.load_context(h)
  local ctx = h:filterContext()
  if ctx == nil then return nil end
  local id = ctx:get("id")
  if id == nil then return nil end
  local entry = contexts[id]
  if entry == nil then
    if ctx:get("tries") ~= nil then
      entry = prepare_attempt(ctx)
    elseif ctx:get("key_retry") ~= nil then -- a key-retry route: the backend it sends to (llmc.keys, M.on_attempt)
      entry = { key_retry = true, upstream = true, b = prepare_rule(ctx:get("route"), ctx:get("rule"),
        { backends = { ctx:get("key_retry") } }, ctx:get("protocols")).backends[1] }
    else
      entry = prepare(function(k) return ctx:get(k) end)
    end
    if ncontexts >= MAX_CACHED_CONTEXTS then contexts, ncontexts = {}, 0 end
    contexts[id], ncontexts = entry, ncontexts + 1
    -- Each ctx:get() above built a fresh Lua copy of part of the route's Struct, garbage now. One
    -- bounded step of the collector per prepared context (once per id and worker, never on a cached
    -- one) keeps a first pass over many routes from raising the heap's high-water mark, which the
    -- process keeps: 1,000 routes, +17 MB of RSS after one request each without it, +8 MB with it
    -- (docs/performance.md, "Lua as modules, delivered once").
    collect("step", GC_STEP)
  end
  return entry
end

function M.pick(cfg, r)
  local target = r * cfg.total
  for _, b in ipairs(cfg.backends) do
    if target < b.upto then return b end
  end
  return cfg.backends[#cfg.backends]
end

-- API keys from mounted Secret files, re-read at most every KEY_TTL_SECONDS so that a rotated
-- Secret (kubelet swaps the files atomically) is used without a restart.
local keys = {}

local function read_key_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local v = f:read("*a")
  f:close()
  if v == nil then return nil end
  v = v:gsub("[\r\n]+$", "")
  if v == "" then return nil end
  return v
end

function M.api_key(b, now)
  if b.api_key_file == nil then return b.api_key end
  local entry = keys[b.api_key_file]
  if entry == nil or now >= entry.expires then
    entry = { value = read_key_file(b.api_key_file), expires = now + KEY_TTL_SECONDS }
    keys[b.api_key_file] = entry
  end
  return entry.value
end

return M
