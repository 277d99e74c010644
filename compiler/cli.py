"""The ``llmc`` command line. Heavy modules are imported inside commands so ``--help`` stays fast.

Exit codes: 0 success (warnings allowed), 1 input errors, 2 usage errors.
Generated objects go to stdout; diagnostics, notes and the summary go to stderr; on any error
stdout stays empty (all or nothing).
"""

from __future__ import annotations

import sys
from enum import StrEnum
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Compile LLMProvider/LLMRoute (istio.alibabacloud.com/v1beta1) into stock "
                       "Istio ServiceEntry, DestinationRule, VirtualService and EnvoyFilter objects.")


class OutputFormat(StrEnum):
    yaml = "yaml"
    json = "json"


class Emit(StrEnum):
    objects = "objects"
    ir = "ir"


class DiagFormat(StrEnum):
    text = "text"
    json = "json"


FilesOpt = Annotated[list[str], typer.Option("-f", "--filename", help="File, directory (recursive) or - for stdin.")]
NamespaceOpt = Annotated[str, typer.Option("-n", "--namespace", help="Namespace for objects that name none.")]
DomainOpt = Annotated[str, typer.Option("--cluster-domain", help="Kubernetes cluster DNS domain.")]
SecretsOpt = Annotated[str, typer.Option("--secrets-dir", help="Directory in the proxy where Secrets "
                                         "named by apiKeySecretRef are mounted (one folder per Secret).")]
EgressOpt = Annotated[str | None, typer.Option(
    "--egress-gateway", help="Egress-gateway mode: NAMESPACE/SERVICE of the egress gateway. Sidecars send "
    "LLM traffic to it over mTLS; it shapes requests and holds the keys.")]
EgressLabelsOpt = Annotated[str, typer.Option(
    "--egress-gateway-labels", help="Labels of the egress gateway pods, k=v[,k=v].")]


def _labels(text: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected k=v, got {item!r}", param_hint="--egress-gateway-labels")
        pairs.append((key, value))
    if not pairs:
        raise typer.BadParameter("at least one label is needed", param_hint="--egress-gateway-labels")
    return tuple(sorted(pairs))


def _options(namespace: str, cluster_domain: str, secrets_dir: str, egress: str | None, egress_labels: str,
             telemetry: bool = False):
    import re

    from .resolve import Options

    if egress is not None and not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-a-z0-9]*[a-z0-9])?", egress):
        raise typer.BadParameter("expected NAMESPACE/SERVICE, e.g. istio-system/istio-egressgateway",
                                 param_hint="--egress-gateway")
    return Options(namespace=namespace, cluster_domain=cluster_domain, secrets_dir=secrets_dir,
                   egress_gateway=egress, egress_labels=_labels(egress_labels), telemetry=telemetry)


def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"llmc {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """llmc: LLM traffic routing for stock Istio."""


def _compile(files: list[str], opts):
    from .pipeline import compile_paths

    return compile_paths(files, opts)


def _report(result) -> None:
    diags = result.diagnostics
    if diags.items:
        sys.stderr.write(diags.format_text() + "\n")
        sys.stderr.write(f"llmc: {diags.summary()}\n")


@app.command()
def render(
    filename: FilesOpt,
    namespace: NamespaceOpt = "default",
    output: Annotated[OutputFormat, typer.Option("-o", "--output", help="Output format.")] = OutputFormat.yaml,
    emit: Annotated[Emit, typer.Option("--emit", help="objects: Istio objects; ir: the compiler's IR.")] = Emit.objects,
    cluster_domain: DomainOpt = "cluster.local",
    secrets_dir: SecretsOpt = "/etc/llmc/secrets",
    egress_gateway: EgressOpt = None,
    egress_gateway_labels: EgressLabelsOpt = "istio=egressgateway",
    telemetry: Annotated[bool, typer.Option("--telemetry", help="Also emit Telemetry resources (access log "
                                            "provider from `llmc meshconfig`, llm_model on istio_requests_total) "
                                            "and token-metric EnvoyFilters.")] = False,
    out_dir: Annotated[str | None, typer.Option("--out-dir", help="Write one file per object under DIR "
                                                "(<namespace>/<kind>-<name>.yaml); remove files of earlier runs "
                                                "that are no longer produced.")] = None,
    check: Annotated[str | None, typer.Option("--check", help="Compare with the committed output at PATH "
                                              "(an --out-dir directory or a rendered file); exit 1 with a "
                                              "unified diff when they differ.")] = None,
) -> None:
    """Compile and print the Istio objects, ready for `kubectl apply -f -`."""
    result = _compile(filename, _options(namespace, cluster_domain, secrets_dir, egress_gateway,
                                         egress_gateway_labels, telemetry))
    _report(result)
    if not result.ok:
        raise typer.Exit(1)
    if check is not None or out_dir is not None:
        from pathlib import Path

        from . import gitops

        if check is not None:
            diff = gitops.check(Path(check), result.objects)
            if diff:
                sys.stdout.write(diff)
                sys.stderr.write(f"llmc: {check} is out of date: run `llmc render ... "
                                 f"{'--out-dir' if Path(check).is_dir() else '>'} {check}`\n")
                raise typer.Exit(1)
            sys.stderr.write(f"llmc: {check} is up to date\n")
            return
        changed, removed = gitops.write_out_dir(Path(out_dir), gitops.out_dir_files(result.objects))
        sys.stderr.write(f"llmc: {len(result.objects)} objects in {out_dir}: {len(changed)} written, "
                         f"{len(removed)} stale removed\n")
        return
    if emit is Emit.ir:
        import json

        from .ir import to_data

        sys.stdout.write(json.dumps(to_data(result.program), indent=2, ensure_ascii=False) + "\n")
        return
    from .emit import dump_json, iter_yaml
    from .pipeline import gc_paused

    with gc_paused():
        if output is OutputFormat.json:
            sys.stdout.write(dump_json(result.objects))
        else:
            for chunk in iter_yaml(result.objects):
                sys.stdout.write(chunk)


@app.command()
def validate(
    filename: FilesOpt,
    namespace: NamespaceOpt = "default",
    output: Annotated[DiagFormat, typer.Option("-o", "--output", help="Diagnostics format.")] = DiagFormat.text,
    cluster_domain: DomainOpt = "cluster.local",
    secrets_dir: SecretsOpt = "/etc/llmc/secrets",
    egress_gateway: EgressOpt = None,
    egress_gateway_labels: EgressLabelsOpt = "istio=egressgateway",
) -> None:
    """Check the inputs and report every problem; print nothing else."""
    result = _compile(filename, _options(namespace, cluster_domain, secrets_dir, egress_gateway,
                                         egress_gateway_labels))
    if output is DiagFormat.json:
        sys.stdout.write(result.diagnostics.format_json() + "\n")
    else:
        _report(result)
    if not result.ok:
        raise typer.Exit(1)


@app.command()
def mounts(
    filename: FilesOpt,
    namespace: NamespaceOpt = "default",
    cluster_domain: DomainOpt = "cluster.local",
    secrets_dir: SecretsOpt = "/etc/llmc/secrets",
    egress_gateway: EgressOpt = None,
    egress_gateway_labels: EgressLabelsOpt = "istio=egressgateway",
) -> None:
    """Print where the Secrets named by apiKeySecretRef must be mounted (sidecar annotations or
    gateway Deployment patches). Never reads a Secret."""
    result = _compile(filename, _options(namespace, cluster_domain, secrets_dir, egress_gateway,
                                         egress_gateway_labels))
    _report(result)
    if not result.ok:
        raise typer.Exit(1)
    from .mounts import render_plan

    sys.stdout.write(render_plan(result.program))


@app.command()
def controller(
    kubeconfig: Annotated[str | None, typer.Option("--kubeconfig", help="Kubeconfig file (default: in-cluster "
                                                    "service account, else ~/.kube/config).")] = None,
    watch_namespace: Annotated[list[str] | None, typer.Option("--watch-namespace", help="Namespace to watch "
                                                              "(repeatable; default: all).")] = None,
    lease_namespace: Annotated[str, typer.Option("--lease-namespace", help="Namespace of the leader-election "
                                                 "Lease.")] = "llmc-system",
    identity: Annotated[str | None, typer.Option("--identity", envvar="POD_NAME", help="This replica's "
                                                 "identity in the Lease (default: hostname).")] = None,
    health_port: Annotated[int, typer.Option("--health-port", help="Port of /healthz, /readyz, /metrics.")] = 8080,
    gateway_namespaces: Annotated[list[str] | None, typer.Option(
        "--gateway-namespaces", help="Namespace (repeatable, or comma-separated) the controller may write "
        "into for sources of other namespaces, i.e. gateway namespaces (default: none; a source's own "
        "namespace is always allowed). The Istio root namespace is writable only if listed.")] = None,
    istio_root_namespace: Annotated[str, typer.Option("--istio-root-namespace", help="Istio's root "
                                                      "namespace (mesh-wide config).")] = "istio-system",
    resync: Annotated[float, typer.Option("--resync", help="Seconds between full reconciles (edits of "
                                          "generated objects are repaired at once, via watches).")] = 60.0,
    api_qps: Annotated[float, typer.Option("--api-qps", help="Client-side rate limit of API writes.")] = 50.0,
    api_burst: Annotated[int, typer.Option("--api-burst", help="Burst of API writes.")] = 100,
    workers: Annotated[int, typer.Option("--workers", help="Work keys reconciled in parallel.")] = 4,
    lease_duration: Annotated[float, typer.Option("--lease-duration", help="Seconds another replica waits, "
                                                  "observing no renewal, before taking the Lease.")] = 15.0,
    renew_deadline: Annotated[float, typer.Option("--renew-deadline", help="Seconds without a successful "
                                                  "renewal after which the leader stops writing and exits "
                                                  "(< lease duration).")] = 10.0,
    retry_period: Annotated[float, typer.Option("--retry-period", help="Seconds between Lease attempts.")] = 2.0,
    request_timeout: Annotated[float, typer.Option("--request-timeout", help="Timeout of every API call "
                                                   "(seconds).")] = 5.0,
    cluster_domain: DomainOpt = "cluster.local",
    secrets_dir: SecretsOpt = "/etc/llmc/secrets",
    egress_gateway: EgressOpt = None,
    egress_gateway_labels: EgressLabelsOpt = "istio=egressgateway",
    telemetry: Annotated[bool, typer.Option("--telemetry", help="As for render.")] = False,
) -> None:
    """Run in the cluster: watch LLMProvider/LLMRoute and apply what `llmc render` would print."""
    from .controller.leader import LeaseConfig
    from .controller.runtime import Tuning, run

    opts = _options("default", cluster_domain, secrets_dir, egress_gateway, egress_gateway_labels, telemetry)
    try:
        lease = LeaseConfig(lease_duration, renew_deadline, retry_period, request_timeout)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    allowed = sorted({n.strip() for item in gateway_namespaces or [] for n in item.split(",") if n.strip()})
    watched = sorted({n.strip() for item in watch_namespace or [] for n in item.split(",") if n.strip()})
    code = run(opts, kubeconfig=kubeconfig, namespaces=watched, lease_namespace=lease_namespace,
               identity=identity, health_port=health_port, lease=lease,
               tuning=Tuning(resync=resync, qps=api_qps, burst=api_burst, workers=workers),
               gateway_namespaces=allowed, istio_root_namespace=istio_root_namespace)
    raise typer.Exit(code)


@app.command()
def krm() -> None:
    """KRM function: read a config.kubernetes.io/v1 ResourceList on stdin, write one on stdout
    (for kustomize exec functions and kpt). functionConfig.data: namespace, clusterDomain,
    secretsDir, egressGateway, telemetry, keepSources."""
    from .gitops import krm as run

    out, code = run(sys.stdin.read())
    sys.stdout.write(out)
    raise typer.Exit(code)


@app.command()
def meshconfig() -> None:
    """Print the MeshConfig extensionProviders entry for llmc's access log (merge it into your
    IstioOperator/Helm meshConfig; `llmc render --telemetry` emits the Telemetry that enables it)."""
    from .emit import dump_yaml
    from .telemetry import mesh_config

    sys.stdout.write("# meshConfig entry for llmc's LLM access log (istioctl/Helm values: meshConfig.*)\n")
    sys.stdout.write(dump_yaml([mesh_config()]))


@app.command()
def crds(
    out_dir: Annotated[str | None, typer.Option("--out-dir", help="Write one file per CRD here "
                                                 "instead of printing (used for schemas/).")] = None,
) -> None:
    """Print the CustomResourceDefinitions for LLMProvider and LLMRoute."""
    from pathlib import Path

    from .crds import render_crds

    files = render_crds()
    if out_dir is None:
        sys.stdout.write("".join(files.values()))
        return
    for name, text in files.items():
        Path(out_dir, name).write_text(text, encoding="utf-8")
        sys.stderr.write(f"wrote {Path(out_dir, name)}\n")


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
