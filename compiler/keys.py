"""Several API keys per provider (``apiKeys``, ``apiKeySecretRefs``; docs/api-keys.md): what the Lua
filter gets for a backend's keys, and the round-robin order.

The filter chooses one key per request (``templates/lua/llmc/keys.lua``):

* ``RoundRobin`` (the default) steps through :func:`round_robin_order`, a cycle in which each key
  appears as often as its weight, spread out (smooth weighted round robin, as nginx does it), so two
  keys weighted 3:1 go ``0 0 1 0``, not ``0 0 0 1``. The position in the cycle is a counter of the
  Lua VM, and Envoy runs one VM per worker thread: each worker keeps its own turn (documented).
* ``Weighted`` picks at random by weight, each request on its own.

A key is named in access logs and metrics by its index in the list (``llm_api_key_id``): never by
the key, nor by anything derived from it (a Secret's content is unknown here and may rotate).
"""

from __future__ import annotations

from functools import reduce
from math import gcd

from .ir import RequestConfig, SecretRef

__all__ = ["MAX_ORDER", "key_context", "key_ids", "round_robin_order"]

#: The longest cycle the filter steps through (16 keys × weight 100 at most, before the gcd).
MAX_ORDER = 1600


def round_robin_order(weights: list[int] | tuple[int, ...]) -> list[int]:
    """Indices (0-based) of the keys in one round-robin cycle: key i appears weights[i] / g times
    (g: the weights' greatest common divisor), interleaved by smooth weighted round robin: each turn
    every key gains its weight, the key with the most (the first on a tie) is chosen and loses the
    total. Deterministic."""
    if not weights or any(w < 1 for w in weights):
        raise ValueError(f"weights must be positive: {weights!r}")
    g = reduce(gcd, weights)
    w = [x // g for x in weights]
    total = sum(w)
    current = [0] * len(w)
    out = []
    for _ in range(total):
        for i, x in enumerate(w):
            current[i] += x
        best = max(range(len(w)), key=lambda i: (current[i], -i))
        current[best] -= total
        out.append(best)
    assert len(out) <= MAX_ORDER
    return out


def key_ids(c: RequestConfig) -> list[str]:
    """``llm_api_key_id`` of each key of a several-keys config: its index in the list."""
    return [str(i) for i in range(len(c.api_keys) or len(c.api_key_secrets))]


def key_context(c: RequestConfig, secrets_dir: str) -> dict:
    """The backend-context fields of a config's keys: ``api_key_file`` or ``api_key`` for one key;
    for several, ``keys`` (each ``{id, weight}`` with ``api_key_file`` or ``api_key``) and either
    ``key_order`` (RoundRobin: 1-based Lua indices of one cycle) or ``key_selection: "Weighted"``."""
    if c.api_key_secret is not None:
        return {"api_key_file": secret_path(secrets_dir, c.api_key_secret)}
    if c.api_key is not None:
        return {"api_key": c.api_key}
    if c.api_key_secrets:
        entries = [{"api_key_file": secret_path(secrets_dir, SecretRef(r.name, r.key)), "weight": r.weight}
                   for r in c.api_key_secrets]
    elif c.api_keys:
        entries = [{"api_key": k, "weight": 1} for k in c.api_keys]
    else:
        return {}
    keys = [{**e, "id": i} for e, i in zip(entries, key_ids(c), strict=True)]
    if c.key_selection == "Weighted":
        return {"keys": keys, "key_selection": "Weighted"}
    weights = [r.weight for r in c.api_key_secrets] or [1] * len(c.api_keys)
    return {"keys": keys, "key_order": [i + 1 for i in round_robin_order(weights)]}


def secret_path(secrets_dir: str, ref: SecretRef) -> str:
    """Where the proxy reads a Secret key: the Secret is mounted at ``<secrets_dir>/<name>``."""
    return f"{secrets_dir}/{ref.name}/{ref.key}"
