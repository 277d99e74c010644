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

local M = {}

-- The prepared keys of backend context entry `b` (once per context id and worker).
function M.prepare(b)
  local list, total = {}, 0
  for i, k in ipairs(b.keys) do
    total = total + (k.weight or 1)
    list[i] = { id = k.id, api_key = k.api_key, api_key_file = k.api_key_file, upto = total }
  end
  return { list = list, total = total, order = b.key_order, turn = 0 }
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

return M
