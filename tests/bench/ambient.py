"""Section "ambient": CPU per request of the seed's waypoint rendering (``--target ambient``, laid out
as istiod lays out a waypoint: tests/support/waypoint_harness.py) against its sidecar rendering, on
the same Envoy and mock provider, per body. Both run today's Lua; the waypoint adds the handle proxy
of ``templates/lua/ambient.lua`` (every call into Envoy goes through a Lua closure) and looks its
context up by route name instead of receiving it from the route."""

from __future__ import annotations

import argparse

from tests.bench import bodies
from tests.bench.common import fmt_spread
from tests.bench.dataplane import add_load_arguments, load_of, rounds_of, sizes_of, summarize
from tests.bench.rig import HOST, Proxy, Rig, interleave

NAME = "ambient"
HELP = "CPU per request of the waypoint (ambient) rendering vs the sidecar rendering of the seed"


class WaypointProxy(Proxy):
    """The waypoint layout; its port is the chain of the bench's host."""

    def start(self) -> WaypointProxy:
        from tests.support.waypoint_harness import Waypoint

        self.envoy = Waypoint(self.bootstrap, concurrency=1)
        return self

    @property
    def port(self) -> int:
        return self.envoy.ports[HOST]


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_load_arguments(p)


def run(args: argparse.Namespace) -> dict:
    from tests.support.envoy_harness import build_bootstrap
    from tests.support.mesh import llmc_render
    from tests.support.waypoint_harness import build_waypoint_bootstrap

    names, rounds = sizes_of(args, "1k"), rounds_of(args, 3)
    rig = Rig()
    try:
        seed = ("-f", "samples/seed")
        side = build_bootstrap(llmc_render(*seed), rig.ports, str(rig.ca_file))
        way = build_waypoint_bootstrap(llmc_render(*seed, "--target", "ambient"), rig.ports, str(rig.ca_file),
                                       services={"demo-llm-server.default.svc.cluster.local": "default"})
        proxies = {"sidecar": Proxy("sidecar", side.bootstrap).start(),
                   "waypoint": WaypointProxy("waypoint", way.bootstrap).start()}
        rig.proxies.extend(proxies.values())
        if not all(rig.shapes(p) for p in proxies.values()):
            raise SystemExit("ambient: llmc's Lua does not shape the bench's requests; the comparison would be void")
        rows = []
        for name in names:
            data, body_file = rig.body(name)
            print(f"  ambient {name} ({len(data)} bytes)", flush=True)
            runs = interleave(rig, proxies, body_file, rounds, load_of(args))
            rows.append(summarize(name, data, runs, "sidecar", "waypoint"))
        return {"envoy": rig.envoy_version, "rounds": rounds, "seconds": args.seconds, "bodies": rows}
    finally:
        rig.close()


def format(result: dict) -> str:
    lines = [f"Ambient: CPU per request of the waypoint rendering / the sidecar rendering of the seed (Envoy "
             f"{result['envoy']}; {result['rounds']} interleaved rounds of ≤ {result['seconds']:g} s; median (min–max))"]
    for b in result["bodies"]:
        cpu = b["cpu_us"]
        lines.append(f"{bodies.label(b['body']):>13}: sidecar {fmt_spread(cpu['sidecar'], 1)} µs, waypoint "
                     f"{fmt_spread(cpu['waypoint'], 1)} µs, ratio {fmt_spread(b['cpu_ratio'], 3)}")
    return "\n".join(lines)
