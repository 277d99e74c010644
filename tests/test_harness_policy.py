"""The Envoy harness merges DestinationRule traffic policies as istiod does (``MergeTrafficPolicy``,
pilot/pkg/networking/core/cluster_builder.go): a subset without a policy keeps the destination's TLS,
which is how llmc's per-key subsets (docs/failover.md) reach the provider over TLS in a real mesh."""

from __future__ import annotations

from tests.support.envoy_harness import _cluster, _merged_tls, logged_entries, logged_lines

SIMPLE = {"mode": "SIMPLE", "sni": "api.example.com"}


def dr(policy=None, subset_policy=None):
    subset = {"name": "llmc-key-2"}
    if subset_policy is not None:
        subset["trafficPolicy"] = subset_policy
    spec = {"host": "api.example.com", "subsets": [subset]}
    if policy is not None:
        spec["trafficPolicy"] = policy
    return {"spec": spec}


def test_a_subset_without_a_policy_keeps_the_destinations_tls():
    cluster = _cluster("api.example.com", 443, 1, dr({"tls": SIMPLE}), "ca.pem", subset="llmc-key-2")
    assert cluster["name"] == "outbound|443|llmc-key-2|api.example.com"
    assert cluster["transport_socket"]["typed_config"]["sni"] == "api.example.com"


def test_a_subsets_tls_replaces_the_destinations_and_port_level_settings_do_not_inherit():
    other = {"mode": "SIMPLE", "sni": "other.example.com"}
    assert _merged_tls(SIMPLE, {"tls": other}, 443) == other
    assert _merged_tls(SIMPLE, {"loadBalancer": {"simple": "RANDOM"}}, 443) == SIMPLE
    assert _merged_tls(SIMPLE, {"tls": other, "portLevelSettings": [{"port": {"number": 443}}]}, 443) is None
    assert _merged_tls(None, {"portLevelSettings": [{"port": {"number": 443}, "tls": other}]}, 443) == other
    assert _merged_tls(None, {"portLevelSettings": [{"port": {"number": 8443}, "tls": other}]}, 443) is None
    plain = _cluster("api.example.com", 443, 1, dr({"tls": SIMPLE}, {"portLevelSettings": [{"port": {"number": 443}}]}),
                     "ca.pem", subset="llmc-key-2")
    assert "transport_socket" not in plain


def test_access_log_readers_skip_the_line_envoy_is_still_writing(tmp_path):
    """Envoy's flush can be mid-line when a test reads: only complete lines are returned (the cut
    one would fail json.loads), and a file not written yet has none."""
    path = tmp_path / "access.log"
    assert logged_lines(path) == [] and logged_entries(path) == []
    path.write_text('{"a": 1}\n{"a": 2}\n{"a"')
    assert logged_entries(path) == [{"a": 1}, {"a": 2}]
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3}\n')
    assert logged_lines(path) == ['{"a": 1}', '{"a": 2}', '{"a": 3}']
