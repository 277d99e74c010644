-- llmc.keys: several API keys per provider (apiKeys, apiKeySecretRefs; docs/api-keys.md). A backend
-- with several keys carries `keys` (each {id, weight, api_key or api_key_file}) and either
-- `key_order` (RoundRobin: one cycle of 1-based key indices, computed by compiler/keys.py) or
-- `key_selection = "Weighted"`. Each request uses one key (M.choose); its index is recorded as
-- llmc:api_key_id for the access log and metrics, never the key.
--
-- The round-robin turn is a field of the prepared backend, which lives in this Lua VM: Envoy runs
-- one VM per worker thread, so each worker keeps its own turn (the spread is exact per worker).
-- A key entry has the fields of a one-key backend (api_key, api_key_file), so llmc.context's
-- M.api_key reads it (and `llmc explain` replaces that reader for keys too).

local sub, find = string.sub, string.find

local M = {}

-- The key of one request for the prepared keys `ks` (llmc.request's credential step): chosen, its
-- index recorded in the stream `h`'s metadata, and read (a literal, or its file through
-- llmc.context's M.api_key, called through that table); false when its file is missing.
local function use(ks, h)
  local k = M.choose(ks, math.random())
  h:streamInfo():dynamicMetadata():set("llmc", "api_key_id", k.id)
  if k.api_key_file == nil then return k.api_key end
  return ks.context.api_key(k, os.time()) or false
end

-- The prepared keys of backend context entry `b` (once per context id and worker); `context` is
-- llmc.context's table (this module cannot require it: llmc.context loads this one).
function M.prepare(b, context)
  local list, total = {}, 0
  for i, k in ipairs(b.keys) do
    total = total + (k.weight or 1)
    list[i] = { id = k.id, api_key = k.api_key, api_key_file = k.api_key_file, upto = total }
  end
  return { list = list, total = total, order = b.key_order, turn = 0, use = use, context = context }
end

-- The key of this request: the next in the round-robin cycle, or by weight with `r` in [0, 1).
function M.choose(ks, r)
  local order = ks.order
  if order ~= nil then
    local turn = ks.turn % #order + 1
    ks.turn = turn
    return ks.list[order[turn]]
  end
  local target = r * ks.total
  local list = ks.list
  for i = 1, #list do
    if target < list[i].upto then return list[i] end
  end
  return list[#list]
end

-- Retrying with the next key (retryKeysOn): on such a route Envoy retries the answers named there on
-- the same cluster, at most once per other key, and this runs in the upstream filter (llmc.upstream,
-- in the router) before every try (M.on_attempt, like llmc.failover's), with `a.b` the backend the route sends to (the downstream
-- filter shaped the request and chose the first key). The keys a request used are kept in the
-- stream's dynamic metadata (llmc:keys_tried, ",0,2,"), which the downstream and upstream filters
-- share: the first try records the downstream filter's key; each retry takes the next key in list
-- order after the first that the request has not used (a key whose file is missing counts as used)
-- and sets it in the provider's auth header, which the shared header map keeps for later tries.
-- A key is read as the credential step reads it (llmc.context's M.api_key). Envoy stops at num_retries = keys - 1, so
-- a key is left for every retry unless key files are missing; then the try goes without a key
-- (the provider refuses it), never with one that failed.
local METADATA_NS = "llmc"

-- The next key of prepared keys `ks` this request has not used (`tried`, ",0,2,": the first is the
-- one keySelection chose), in list order after that first, wrapping around; a key whose file is
-- missing counts as used (logged on `h`). Returns the key (nil: none left), its id and the new `tried`.
function M.next_unused(ks, tried, h, provider)
  local list = ks.list
  local n, first = #list, 1
  for i = 1, n do
    if "," .. list[i].id .. "," == sub(tried, 1, #list[i].id + 2) then first = i end
  end
  local now = os.time()
  for j = 1, n - 1 do
    local k = list[(first + j - 1) % n + 1]
    if not find(tried, "," .. k.id .. ",", 1, true) then
      tried = tried .. k.id .. ","
      local key = k.api_key or ks.context.api_key(k, now)
      if key ~= nil then return key, k.id, tried end
      h:logErr("llmc: API key file for provider " .. provider .. " is missing or empty")
    end
  end
  return nil, nil, tried
end

function M.on_attempt(h, a)
  local b = a.b
  local md = h:streamInfo():dynamicMetadata()
  local mine = md:get(METADATA_NS) or {}
  local tried = mine.keys_tried
  if tried == nil then
    md:set(METADATA_NS, "keys_tried", "," .. tostring(mine.api_key_id) .. ",")
    return
  end
  local key, id
  key, id, tried = M.next_unused(b.keys, tried, h, b.provider)
  md:set(METADATA_NS, "keys_tried", tried)
  if key ~= nil then
    h:headers():replace(b.auth_header, b.auth_prefix .. key)
    md:set(METADATA_NS, "api_key_id", id)
    return
  end
  h:headers():remove(b.auth_header) -- no key left: never one that failed again
end

return M
