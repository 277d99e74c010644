"""`llmc mounts`: what must be mounted where so proxies can read `apiKeySecretRef` keys.

llmc never reads or copies a Secret. The proxy that shapes a request reads the key from
``<secrets_dir>/<secret>/<key>``; this module works out, from the same placements the translators
use, which proxies those are and which Secrets they need:

* sidecars of a namespace: pod-template annotations ``sidecar.istio.io/userVolume`` and
  ``sidecar.istio.io/userVolumeMount`` (Istio's injector mounts the volume into istio-proxy);
* a gateway (ingress, or the egress gateway): a strategic-merge patch for its Deployment adding the
  volume and the ``istio-proxy`` container's mount. The Secret must live in the gateway's namespace;
* a waypoint (``--target ambient``): the same patch as the ``deployment`` key of a ConfigMap, which the
  waypoint's Gateway names in ``spec.infrastructure.parametersRef`` (istiod applies it to the
  Deployment it creates: ``pilot/pkg/config/kube/gatewaycommon/deploymentcontroller.go``). The Secret
  must live in the waypoint's namespace.

Kubelet refreshes mounted Secrets in place; the Lua filter re-reads a key file at most once a second,
so a rotated key is used without a restart.
"""

from __future__ import annotations

import json

from .constants import CONFIG_MAP, GENERATED
from .ir import Program
from .names import volume_name


def plan(program: Program) -> list[dict]:
    """One entry per proxy group that needs Secrets: where, which Secrets, and the patch."""
    groups: dict[tuple, set[str]] = {}
    waypoints: dict[tuple[str, str], set[str]] = {}
    for vh in program.vhosts:
        secrets = {b.config.api_key_secret.name for r in vh.rules for b in r.backends if b.config.api_key_secret}
        if not secrets:
            continue
        if program.waypoint is not None:
            waypoints.setdefault(program.waypoint.of(vh.namespace), set()).update(secrets)
            continue
        for pl in vh.placements:
            groups.setdefault((pl.on_gateway, pl.namespace, pl.selector), set()).update(secrets)
    out = []
    for (on_gateway, namespace, selector), secrets in sorted(groups.items()):
        names = sorted(secrets)
        volumes = [{"name": volume_name(s), "secret": {"secretName": s}} for s in names]
        mounts = [{"name": volume_name(s), "mountPath": f"{program.secrets_dir}/{s}", "readOnly": True}
                  for s in names]
        entry = {"proxies": "gateway" if on_gateway else "sidecars", "namespace": namespace,
                 "selector": dict(selector), "secrets": names}
        if not on_gateway:
            entry["patch"] = {"spec": {"template": {"metadata": {"annotations": {
                "sidecar.istio.io/userVolume": json.dumps(volumes, separators=(",", ":")),
                "sidecar.istio.io/userVolumeMount": json.dumps(mounts, separators=(",", ":")),
            }}}}}
        else:
            entry["deployment"] = (program.egress.service if program.egress is not None
                                   and program.egress.namespace == namespace
                                   and tuple(sorted(selector)) == program.egress.labels else None)
            entry["patch"] = {"spec": {"template": {"spec": {
                "volumes": volumes,
                "containers": [{"name": "istio-proxy", "volumeMounts": mounts}],
            }}}}
        out.append(entry)
    for (namespace, name), secrets in sorted(waypoints.items()):
        names = sorted(secrets)
        patch = {"spec": {"template": {"spec": {
            "volumes": [{"name": volume_name(s), "secret": {"secretName": s}} for s in names],
            "containers": [{"name": "istio-proxy", "volumeMounts": [
                {"name": volume_name(s), "mountPath": f"{program.secrets_dir}/{s}", "readOnly": True}
                for s in names]}]}}}}
        out.append({"proxies": "waypoints", "namespace": namespace, "selector": {}, "secrets": names,
                    "gateway": name, "patch": {
                        "apiVersion": GENERATED[CONFIG_MAP].api_version, "kind": CONFIG_MAP,
                        "metadata": {"name": f"{name}-llmc-keys", "namespace": namespace},
                        "data": {"deployment": _yaml(patch)}}})
    return out


def _yaml(value: dict) -> str:
    from .emit import dump_yaml

    return dump_yaml([value]).removeprefix("---\n")


def render_plan(program: Program) -> str:
    """The plan as commented YAML documents, one per proxy group, each a ready patch."""
    from .emit import dump_yaml

    chunks = []
    for entry in plan(program):
        labels = ",".join(f"{k}={v}" for k, v in entry["selector"].items())
        secrets = ", ".join(entry["secrets"])
        if entry["proxies"] == "waypoints":
            head = [f"# Waypoint {entry['namespace']}/{entry['gateway']} needs Secret(s) {secrets} (in namespace "
                    f"{entry['namespace']}).",
                    "# Apply this ConfigMap and name it in the waypoint's Gateway (docs/ambient.md#api-keys):",
                    "#   spec.infrastructure.parametersRef: {group: \"\", kind: ConfigMap, name: "
                    f"{entry['patch']['metadata']['name']}}}"]
        elif entry["proxies"] == "sidecars":
            pods = f" (pods with labels {labels})" if labels else ""
            head = [f"# Sidecars in namespace {entry['namespace']}{pods} need Secret(s) {secrets} "
                    "(in that namespace).",
                    "# Merge into the pod template of every workload that calls the providers, e.g.",
                    f"#   kubectl -n {entry['namespace']} patch deployment <workload> --type merge --patch-file this.yaml"]
        else:
            target = entry["deployment"] or f"<the Deployment with labels {labels}>"
            head = [f"# Gateway pods {labels} in namespace {entry['namespace']} need Secret(s) {secrets} "
                    f"(in namespace {entry['namespace']}).",
                    f"#   kubectl -n {entry['namespace']} patch deployment {target} --type strategic "
                    "--patch-file this.yaml"]
        chunks.append("\n".join(head) + "\n" + dump_yaml([entry["patch"]]))
    if not chunks:
        return "# No apiKeySecretRef: nothing to mount.\n"
    return "".join(chunks)
