"""The test mesh shared by the end-to-end tests and the benchmarks.

One sidecar in namespace ``default`` with the seed's end state (``samples/seed``) and the e2e
extras (``tests/testdata/e2e/extras.yaml``), as rendered by the real ``llmc`` CLI, plus a plain
non-LLM Service ``other`` for checking that other traffic is untouched.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ruamel.yaml import YAML

from tests.support.envoy_harness import Envoy, build_bootstrap

REPO = Path(__file__).resolve().parents[2]
EXTRAS = REPO / "tests" / "testdata" / "e2e" / "extras.yaml"
OTHER = "other.default.svc.cluster.local"


def llmc_render(*args: str) -> list[dict]:
    """Run the real CLI and parse its stdout: tests consume the emitted YAML, not internal objects."""
    out = subprocess.run([sys.executable, "-m", "compiler.cli", "render", *args], cwd=REPO,
                         capture_output=True, text=True, check=True)
    return [d for d in YAML(typ="safe").load_all(out.stdout) if d]


def seed_mesh(upstreams: dict[str, int], ca_file: str, secrets_dir: Path, apply_envoyfilters: bool = True,
              access_logs: list[dict] | None = None):
    """The harness layout; ``upstreams`` maps provider hosts (and ``other``) to local ports."""
    objects = llmc_render("-f", "samples/seed", "-f", str(EXTRAS), "--secrets-dir", str(secrets_dir))
    other_port = upstreams.get(OTHER, upstreams.get("other.example.com", 1))
    other = {"name": f"{OTHER}:80", "domains": [OTHER, "other"],
             "routes": [{"name": "default", "match": {"prefix": "/"}, "route": {"cluster": f"outbound|80||{OTHER}"}}]}
    other_cluster = {"name": f"outbound|80||{OTHER}", "type": "STATIC",
                     "load_assignment": {"cluster_name": OTHER, "endpoints": [{"lb_endpoints": [{
                         "endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                                     "port_value": other_port}}}}]}]}}
    return build_bootstrap(objects, upstreams, ca_file, extra_vhosts=[other], extra_clusters=[other_cluster],
                           apply_envoyfilters=apply_envoyfilters, access_logs=access_logs)


def sidecar_layouts(upstreams: dict[str, int], ca_file: str, secrets_dir: Path) -> dict[str, dict]:
    """{"limit": the layout without llmc's EnvoyFilters, "llmc": with them} (for benchmarks)."""
    layouts = {}
    for name, apply in (("limit", False), ("llmc", True)):
        layout = seed_mesh(upstreams, ca_file, secrets_dir, apply_envoyfilters=apply)
        assert not layout.unmatched, layout.unmatched
        layouts[name] = layout.bootstrap
    return layouts


@contextmanager
def running_envoy(objects: list[dict], upstreams: dict, ca_file: str | None = None, *, every_patch: bool = False,
                  **layout) -> Iterator[Envoy]:
    """A real Envoy with ``objects`` laid out as istiod would (every EnvoyFilter patch must match);
    ``every_patch``: none may be skipped for the proxy's version either (failover's patches are for
    Istio 1.31 proxies only, and a test of failover on a proxy without them would prove nothing)."""
    built = build_bootstrap(objects, {h: u.port for h, u in upstreams.items()}, ca_file, **layout)
    assert built.unmatched == [], built.unmatched
    assert not every_patch or built.skipped == [], built.skipped
    proxy = Envoy(built.bootstrap)
    try:
        yield proxy
    finally:
        proxy.stop()
