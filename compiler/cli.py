"""The ``llmc`` command line. Heavy modules are imported inside commands so ``--help`` stays fast.

Exit codes: 0 success (warnings allowed), 1 input errors, 2 usage errors.
Generated objects go to stdout; diagnostics, notes and the summary go to stderr; on any error
stdout stays empty (all or nothing).
"""

from __future__ import annotations

import functools
import inspect
import shlex
import sys
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from enum import StrEnum
from typing import Annotated, Any

import typer

from .clihelp import SHELLS, Command, Group
from .options import FUNCTION_ONLY, SETTINGS, Options, Setting

app = typer.Typer(cls=Group, add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Compile LLMProvider/LLMRoute (istio.alibabacloud.com/v1beta1) into stock "
                       "Istio ServiceEntry, DestinationRule, VirtualService and EnvoyFilter objects.")


class OutputFormat(StrEnum):
    yaml = "yaml"
    json = "json"
    name = "name"  # kubectl's `-o name`: kind.group/name, one object a line


class ExplainFormat(StrEnum):
    text = "text"
    json = "json"


class Emit(StrEnum):
    objects = "objects"
    ir = "ir"


class DiagFormat(StrEnum):
    text = "text"
    json = "json"


FilesOpt = Annotated[list[str], typer.Option("-f", "--filename", help="File, directory (recursive) or - for stdin.")]


def _typer_option(s: Setting, help_text: str | None = None) -> tuple[Any, Any]:
    """(annotation, default) of the CLI option of setting ``s`` (compiler/options.py)."""
    info = typer.Option(*([s.short] if s.short else []), f"--{s.name}", help=help_text or s.help, metavar=s.metavar)
    if s.switch:
        return Annotated[bool, info], False
    if s.repeatable:
        return Annotated[list[str] | None, info], None
    if s.text_default is None:
        return Annotated[str | None, info], None
    return Annotated[str, info], s.text_default


def settings(*, controller: bool = False, help: dict[str, str] | None = None) -> Callable:
    """Give a command the options of every setting of compiler/options.py (``llmc controller``: the
    ones with ``controller=True``) in place of its ``opts`` parameter, which receives them validated
    as :class:`Options` (a problem is a usage error naming the option). ``help`` replaces a setting's
    help text for this command, keyed by its name."""
    chosen = [s for s in SETTINGS if s.controller or not controller]

    def decorate(func: Callable) -> Callable:
        own = list(inspect.signature(func, eval_str=True).parameters.values())
        at = next(i for i, p in enumerate(own) if p.name == "opts")
        shared = []
        for s in chosen:
            annotation, default = _typer_option(s, (help or {}).get(s.name))
            shared.append(inspect.Parameter(s.param, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                                            default=default))
        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own[:at] + own[at + 1:]]
        params[at:at] = shared

        @functools.wraps(func)
        def command(**kwargs: Any) -> Any:
            values = {s.param: kwargs.pop(s.param) for s in chosen}
            return func(**kwargs, opts=_options(values))

        del command.__wrapped__  # typer reads the signature below, not func's
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate


#: the default of a command's ``opts`` parameter, which @settings replaces by the settings' options
FROM_SETTINGS = Options()


def function_keys() -> str:
    """The function-config keys of ``llmc krm`` and the kustomize plugin, for their help: every
    setting's key with its CLI option, and the keys of the function alone."""
    keys = [f"{s.key} (--{s.name})" for s in SETTINGS]
    keys += [f"{key} ({text})" for key, text in FUNCTION_ONLY.items()]
    return ", ".join(keys)


def _options(values: dict[str, Any]) -> Options:
    """Options from the command line, validated by compiler/options.py (as for `llmc krm`)."""
    from .options import parse_options

    opts, problems = parse_options(**{k: v for k, v in values.items() if v is not None})
    if opts is None:
        option, problem = problems[0]
        raise typer.BadParameter(problem, param_hint=f"--{option}")
    return opts


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


#: On the terminal, diagnostics of one code after the first few are summed up in one line.
PER_CODE = 5


def _report(result) -> None:
    diags = result.diagnostics
    if diags.items:
        sys.stderr.write(diags.format_text(per_code=PER_CODE) + "\n")
        sys.stderr.write(f"llmc: {diags.summary()}\n")


@app.command(cls=Command, short_help="Compile LLMProvider/LLMRoute into Istio objects for `kubectl apply -f -`.")
@settings()
def render(
    ctx: typer.Context,
    filename: FilesOpt,
    opts: Options = FROM_SETTINGS,
    output: Annotated[OutputFormat, typer.Option("-o", "--output", help="Output format: yaml (a stream for "
                                                 "kubectl apply -f -), json (a List) or name (kind.group/name "
                                                 "per line, as kubectl's -o name).")] = OutputFormat.yaml,
    emit: Annotated[Emit, typer.Option("--emit", help="objects: Istio objects; ir: the compiler's IR.")] = Emit.objects,
    passthrough: Annotated[bool, typer.Option("--passthrough", help="Render a whole app folder (Argo CD, "
                                              "Flux): print its other Kubernetes objects unchanged before the "
                                              "generated ones, and skip files that hold no Kubernetes object "
                                              "(one note names them).")] = False,
    allow_empty: Annotated[bool, typer.Option("--allow-empty", help="Accept an input without any LLMProvider "
                                              "or LLMRoute (default: error LLMC006, so that an empty or wrong "
                                              "folder never empties --out-dir or a GitOps app).")] = False,
    out_dir: Annotated[str | None, typer.Option("--out-dir", help="Write one file per object under DIR "
                                                "(<namespace>/<kind>-<name>.yaml); remove files of earlier runs "
                                                "that are no longer produced.")] = None,
    check: Annotated[str | None, typer.Option("--check", help="Compare with the committed output at PATH "
                                              "(an --out-dir directory or a rendered file); exit 1 with a "
                                              "unified diff when they differ.")] = None,
) -> None:
    """Compile and print the Istio objects, ready for `kubectl apply -f -`."""
    if passthrough and (out_dir is not None or check is not None or emit is Emit.ir):
        raise typer.BadParameter("--passthrough prints one stream for a GitOps tool to apply; it cannot be "
                                 "combined with --out-dir, --check or --emit ir", param_hint="--passthrough")
    from .pipeline import compile_paths

    result = compile_paths(filename, opts, passthrough=passthrough)
    if result.ok and result.sources == 0 and not allow_empty:
        _empty_input(ctx, result, filename, out_dir)
    _report(result)
    if not result.ok:
        raise typer.Exit(1)
    if check is not None or out_dir is not None:
        _gitops_files(ctx, result, check, out_dir)
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
            sys.stdout.write(dump_json([p.data for p in result.passthrough] + result.objects))
            return
        if output is OutputFormat.name:
            sys.stdout.write("".join(f"{_object_name(o)}\n" for o in [p.data for p in result.passthrough]
                                     + result.objects))
            return
        for item in result.passthrough:
            sys.stdout.write("---\n" + item.text)
        for chunk in iter_yaml(result.objects):
            sys.stdout.write(chunk)


def _object_name(obj: dict) -> str:
    """kubectl's ``-o name`` form: ``<kind>.<group>/<name>`` (``<kind>/<name>`` for the core group)."""
    group = str(obj.get("apiVersion", "")).rpartition("/")[0]
    kind = str(obj.get("kind", "")).lower()
    return f"{kind}.{group}/{obj['metadata']['name']}" if group else f"{kind}/{obj['metadata']['name']}"


def _empty_input(ctx: typer.Context, result, filename: list[str], out_dir: str | None) -> None:
    effect = (f"(it removes every file llmc wrote in {out_dir})" if out_dir is not None
              else "(it prints nothing)")
    result.diagnostics.error(
        "LLMC006", "no LLMProvider or LLMRoute in the input: refusing to render nothing",
        file=", ".join(filename),
        hint=f"if that is intended, run `{_command(ctx, add=['--allow-empty'])}` {effect}")


def _gitops_files(ctx: typer.Context, result, check: str | None, out_dir: str | None) -> None:
    """--check: diff against committed output; --out-dir: write it. Messages name the command to run."""
    from pathlib import Path

    from . import gitops

    if check is not None:
        diff = gitops.check(Path(check), result.objects)
        if diff:
            sys.stdout.write(diff)
            fix = (_command(ctx, drop={"check", "output", "emit"}, add=["--out-dir", check]) if _is_out_dir(check)
                   else _command(ctx, drop={"check", "output", "emit"}) + f" > {shlex.quote(check)}")
            sys.stderr.write(f"llmc: {check} is out of date; update it with:\n  {fix}\n")
            raise typer.Exit(1)
        sys.stderr.write(f"llmc: {check} is up to date\n")
        return
    assert out_dir is not None  # the caller passes one of check and out_dir
    changed, removed = gitops.write_out_dir(Path(out_dir), gitops.out_dir_files(result.objects))
    sys.stderr.write(f"llmc: {len(result.objects)} objects in {out_dir}: {len(changed)} written, "
                     f"{len(removed)} stale removed; check it in CI with:\n"
                     f"  {_command(ctx, drop={'out_dir', 'output', 'emit'}, add=['--check', out_dir])}\n")


def _is_out_dir(check: str) -> bool:
    """Whether --check PATH is (or, when it does not exist yet, is meant to be) an --out-dir folder:
    an existing directory, or a path that does not name a YAML/JSON file (``out/``, ``rendered``)."""
    from pathlib import Path

    from .load import YAML_SUFFIXES

    path = Path(check)
    if path.exists():
        return path.is_dir()
    return check.endswith("/") or path.suffix not in YAML_SUFFIXES


def _command(ctx: typer.Context, drop: AbstractSet[str] = frozenset(), add: Sequence[str] = ()) -> str:
    """The running `llmc` command line, rebuilt from its parsed options (non-defaults only, in
    declaration order), minus the options named in ``drop``, plus ``add``: a command to copy."""
    words = ["llmc", ctx.info_name or "render"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.name in drop or param.param_type_name != "option" or value is None or value == param.default:
            continue
        flag = param.opts[0]
        if getattr(param, "is_flag", False):
            words += [flag] if value else []
        else:
            for item in value if isinstance(value, list | tuple) else [value]:
                words += [flag, str(getattr(item, "value", item))]
    return shlex.join(words + list(add))


@app.command(cls=Command, short_help="Check the inputs and report every problem.")
@settings()
def validate(
    filename: FilesOpt,
    opts: Options = FROM_SETTINGS,
    output: Annotated[DiagFormat, typer.Option("-o", "--output", help="Diagnostics format.")] = DiagFormat.text,
) -> None:
    """Check the inputs and report every problem; print nothing else."""
    result = _compile(filename, opts)
    if output is DiagFormat.json:
        sys.stdout.write(result.diagnostics.format_json() + "\n")
    else:
        _report(result)
    if not result.ok:
        raise typer.Exit(1)


@app.command(cls=Command, short_help="Show where the Secrets of apiKeySecretRef must be mounted.")
@settings()
def mounts(
    filename: FilesOpt,
    opts: Options = FROM_SETTINGS,
) -> None:
    """Print where the Secrets named by apiKeySecretRef must be mounted (sidecar annotations or
    gateway Deployment patches). Never reads a Secret."""
    result = _compile(filename, opts)
    _report(result)
    if not result.ok:
        raise typer.Exit(1)
    from .mounts import render_plan

    sys.stdout.write(render_plan(result.program))


@app.command(cls=Command, short_help="Run in the cluster: apply what `llmc render` prints, continuously.")
@settings(controller=True)
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
    api_qps: Annotated[float, typer.Option("--api-qps", help="Client-side rate limit of API writes (a cold "
                                           "start of 1,000 providers + 1,000 routes is ~6,900 writes).")] = 200.0,
    api_burst: Annotated[int, typer.Option("--api-burst", help="Burst of API writes.")] = 400,
    workers: Annotated[int, typer.Option("--workers", help="Work keys reconciled in parallel.")] = 4,
    lease_duration: Annotated[float, typer.Option("--lease-duration", help="Seconds another replica waits, "
                                                  "observing no renewal, before taking the Lease.")] = 15.0,
    renew_deadline: Annotated[float, typer.Option("--renew-deadline", help="Seconds without a successful "
                                                  "renewal after which the leader stops writing and exits "
                                                  "(< lease duration).")] = 10.0,
    retry_period: Annotated[float, typer.Option("--retry-period", help="Seconds between Lease attempts.")] = 2.0,
    request_timeout: Annotated[float, typer.Option("--request-timeout", help="Timeout of every API call, "
                                                   "client side and (writes) server side, in seconds; keep "
                                                   "renew deadline + this < lease duration.")] = 3.0,
    opts: Options = FROM_SETTINGS,
) -> None:
    """Run in the cluster: watch LLMProvider/LLMRoute and apply what `llmc render` would print."""
    _require_extra("kubernetes", "controller", "`llmc controller` talks to the API server with the Kubernetes client")
    from .controller.leader import LeaseConfig
    from .controller.runtime import Tuning, run

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


def _require_extra(module: str, extra: str, why: str) -> None:
    """Exit 1 with an install line when an optional dependency is missing (``kubernetes`` is the
    ``controller`` extra: 126 MB that only the controller uses)."""
    from importlib.util import find_spec

    if find_spec(module) is None:
        sys.stderr.write(f"llmc: {why}, which is not installed: install llmc with the {extra} extra, "
                         f"`pip install '.[{extra}]'` from a clone (the image of deploy/Dockerfile has it)\n")
        raise typer.Exit(1)


@app.command(cls=Command, short_help="KRM function (kpt): a ResourceList in, a ResourceList out.",
             help="KRM function: read a config.kubernetes.io/v1 ResourceList on stdin, write one on stdout "
             "(kpt: `kpt fn eval DIR --exec \"llmc krm\"`; for kubectl kustomize use `llmc kustomize-plugin`). "
             f"Keys of functionConfig.data: {function_keys()}.")
def krm() -> None:
    from .gitops import krm as run

    out, code = run(sys.stdin.read())
    sys.stdout.write(out)
    raise typer.Exit(code)


kustomize_app = typer.Typer(cls=Group, no_args_is_help=True, short_help="Install or run llmc as a kustomize exec plugin.",
                            help="llmc as a kustomize exec plugin, for `kubectl kustomize --enable-alpha-plugins` "
                            f"(docs/gitops.md). Keys of an LLMCompiler config: {function_keys()}.")
app.add_typer(kustomize_app, name="kustomize-plugin")


@kustomize_app.command("install", cls=Command)
def kustomize_install(
    plugin_home: Annotated[str | None, typer.Option("--plugin-home", help="kustomize's plugin home (default: "
                                                    "$KUSTOMIZE_PLUGIN_HOME, else $XDG_CONFIG_HOME/kustomize/plugin, "
                                                    "else ~/.config/kustomize/plugin).")] = None,
) -> None:
    """Install the plugin executable for transformers of apiVersion llmc.io/v1, kind LLMCompiler."""
    from pathlib import Path

    from .kustomize import install

    path = install(Path(plugin_home) if plugin_home else None)
    sys.stderr.write(f"llmc: installed {path}\n"
                     "llmc: build with `kubectl kustomize --enable-alpha-plugins DIR | kubectl apply -f -`\n")


@kustomize_app.command("run", hidden=True, cls=Command)
def kustomize_run(config: Annotated[str, typer.Argument(help="The LLMCompiler config file kustomize passes.")]) -> None:
    """What kustomize runs: the resources on stdin, the transformed resources on stdout."""
    from .kustomize import run

    out, err, code = run(config, sys.stdin.read())
    sys.stdout.write(out)
    sys.stderr.write(err)
    raise typer.Exit(code)


@app.command(cls=Command, short_help="Show what one request would become, offline.")
@settings(help={"namespace": "Namespace of the calling workload (and default namespace of the sources)."})
def explain(
    filename: FilesOpt,
    host: Annotated[str, typer.Option("--host", help="The Host the client calls, e.g. dashscope.aliyuncs.com.")],
    header: Annotated[list[str] | None, typer.Option("-H", "--header", help="A request header, name:value "
                                                     "(repeatable).")] = None,
    data: Annotated[str | None, typer.Option("-d", "--data", help="The request body, or @FILE.")] = None,
    method: Annotated[str, typer.Option("--method", help="HTTP method.")] = "POST",
    path: Annotated[str, typer.Option("--path", help="Request path.")] = "/v1/chat/completions",
    labels: Annotated[str, typer.Option("--labels", help="Pod labels of the caller, k=v,k=v.")] = "",
    via: Annotated[str, typer.Option("--via", help="mesh (a sidecar) or a Gateway as namespace/name.")] = "mesh",
    port: Annotated[int, typer.Option("--port", help="Port the client calls.")] = 80,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed the filter's weighted pick.")] = None,
    provider: Annotated[str | None, typer.Option("--provider", help="Force the weighted pick to this provider "
                                                 "(LLMProvider name).")] = None,
    output: Annotated[ExplainFormat, typer.Option("-o", "--output", help="Output format.")] = ExplainFormat.text,
    opts: Options = FROM_SETTINGS,
) -> None:
    """What a request would become: the matched rule, the candidates, the exact upstream request (keys
    masked) or the reply the client gets — computed offline by the real filter code under LuaJIT."""
    from pathlib import Path

    from .explain import ExplainError, Request, format_text
    from .explain import explain as run
    from .options import parse_labels

    result = _compile(filename, opts)
    _report(result)
    if not result.ok:
        raise typer.Exit(1)
    headers = {}
    for item in header or []:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise typer.BadParameter(f"expected name:value, got {item!r}", param_hint="-H")
        headers[name.strip().lower()] = value.strip()
    pod_labels: dict[str, str] = {}
    if labels:
        pairs, problem = parse_labels(labels)
        if problem:
            raise typer.BadParameter(problem, param_hint="--labels")
        pod_labels = dict(pairs)
    body = b""
    if data is not None:
        body = Path(data[1:]).read_bytes() if data.startswith("@") else data.encode()
    req = Request(host=host, method=method.upper(), path=path, headers=headers, body=body,
                  namespace=opts.namespace, labels=pod_labels, via=via, port=port,
                  cluster_domain=opts.cluster_domain)
    try:
        x = run(result.objects, req, seed=seed, provider=provider)
    except ExplainError as exc:
        sys.stderr.write(f"llmc: {exc}\n")
        raise typer.Exit(1) from None
    if output is ExplainFormat.json:
        import json

        sys.stdout.write(json.dumps(x, indent=2, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(format_text(x))


class DiffFormat(StrEnum):
    text = "text"
    markdown = "markdown"
    json = "json"


@app.command(cls=Command, short_help="What a change of the sources does to requests.")
@settings()
def diff(
    base: Annotated[str, typer.Option("--base", help="The configuration before: a file or folder, or REV:PATH "
                                      "(a revision of the current git repository, e.g. main:deploy/llm).")],
    head: Annotated[str, typer.Option("--head", help="The configuration after (same forms as --base).")],
    requests: Annotated[str | None, typer.Option("--requests", help="Requests to replay: JSON Lines (host, path, "
                                                 "headers, body) or llmc's access log.")] = None,
    generate: Annotated[bool, typer.Option("--generate", help="Replay one request per match of every rule of "
                                           "both sides.")] = False,
    output: Annotated[DiffFormat, typer.Option("-o", "--output", help="Output format.")] = DiffFormat.text,
    opts: Options = FROM_SETTINGS,
) -> None:
    """What a change does to requests: each request runs through both configurations with the engine
    of `llmc explain`; exit 0 when nothing changes, 1 when something does, 2 when a side does not compile."""
    from .diff import CorpusError, format_markdown, format_text, read_requests, run
    from .diff import generate as generate_cases
    from .diff.sources import SourceError, materialized
    from .explain import ExplainError

    if (requests is None) == (not generate):
        raise typer.BadParameter("give exactly one of --requests FILE and --generate", param_hint="--requests")
    results = []
    for label, spec in (("base", base), ("head", head)):
        try:
            with materialized(spec) as (path, tmp):
                result = _compile([path], opts)
        except SourceError as exc:
            sys.stderr.write(f"llmc: --{label} {exc}\n")
            raise typer.Exit(2) from None
        if result.diagnostics.items:
            text = result.diagnostics.format_text(per_code=PER_CODE)
            if tmp:
                text = text.replace(tmp, spec.partition(":")[0] + ":")
            sys.stderr.write(text + "\n")
        if not result.ok:
            sys.stderr.write(f"llmc: --{label} {spec} does not compile: {result.diagnostics.summary()}\n")
            raise typer.Exit(2)
        results.append(result)
    try:
        if generate:
            cases, skipped = generate_cases([r.program for r in results if r.program is not None])
            for line in skipped:
                sys.stderr.write(f"llmc: {line}\n")
        else:
            assert requests is not None
            cases = read_requests(requests, results[0].objects)
        for case in cases:  # the requests are explained as the proxies of this cluster domain see them
            case.request.cluster_domain = opts.cluster_domain
        report = run(results[0].objects, results[1].objects, cases)
    except (CorpusError, OSError, ExplainError) as exc:
        sys.stderr.write(f"llmc: {exc}\n")
        raise typer.Exit(2) from None
    if output is DiffFormat.json:
        import json

        sys.stdout.write(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    elif output is DiffFormat.markdown:
        sys.stdout.write(format_markdown(report))
    else:
        sys.stdout.write(format_text(report))
    raise typer.Exit(1 if report["summary"]["changed"] else 0)


_LEGACY_NAMES = next(s for s in SETTINGS if s.field == "legacy_telemetry_names")


@app.command(cls=Command, short_help="Print the MeshConfig entry of llmc's access log.")
def meshconfig(
    otel: Annotated[str | None, typer.Option(
        "--otel", metavar="HOST[:PORT]", help="Send the access log as OpenTelemetry log records to this OTLP/gRPC "
        "collector (port 4317 unless given), e.g. otel-collector.observability.svc.cluster.local, instead of "
        "writing JSON lines to the proxy's stdout.")] = None,
    legacy_telemetry_names: Annotated[bool, typer.Option(f"--{_LEGACY_NAMES.name}", help=_LEGACY_NAMES.help)] = False,
) -> None:
    """Print the MeshConfig extensionProviders entry for llmc's access log (merge it into your
    IstioOperator/Helm meshConfig; `llmc render --telemetry` emits the Telemetry that enables it).
    Its fields carry OpenTelemetry's GenAI names (docs/observability.md)."""
    from .emit import dump_yaml
    from .telemetry import mesh_config, parse_collector

    collector = None
    if otel is not None:
        collector, problem = parse_collector(otel)
        if problem:
            raise typer.BadParameter(problem, param_hint="--otel")
    sys.stdout.write("# meshConfig entry for llmc's LLM access log (istioctl/Helm values: meshConfig.*)\n")
    sys.stdout.write(dump_yaml([mesh_config(legacy_telemetry_names, collector)]))


@app.command(cls=Command, short_help="Print or write the CRDs of LLMProvider and LLMRoute.")
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
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        Path(out_dir, name).write_text(text, encoding="utf-8")
        sys.stderr.write(f"wrote {Path(out_dir, name)}\n")


@app.command(cls=Command, short_help="Print llmc's version.")
def version() -> None:
    """Print llmc's version (the same as `llmc --version`)."""
    _version(True)


@app.command(cls=Command, short_help="Print the shell completion script.")
def completion(
    shell: Annotated[str, typer.Argument(help=f"One of {', '.join(SHELLS)}.", metavar="SHELL")],
) -> None:
    """Print the completion script for SHELL, as `kubectl completion` does: e.g. `source <(llmc completion
    bash)`, or write it where your shell loads completions (`llmc --install-completion` does that)."""
    from .clihelp import completion_script

    if shell not in SHELLS:
        raise typer.BadParameter(f"{shell!r} is not one of {', '.join(SHELLS)}", param_hint="SHELL")
    sys.stdout.write(completion_script(shell).rstrip("\n") + "\n")


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
