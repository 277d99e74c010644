"""The fake API server is honest enough to test against: the real `kubectl` applies and gets through
it (discovery, OpenAPI v3, Tables), server-side apply keeps a second manager's fields, the status
subresource is separate, unknown fields are pruned, bad selectors are refused, writes into missing
namespaces 404, and connections can fail.

`kubectl` is a test prerequisite on CI (installed on the project's CI machines): without it these
tests skip with a reason on a developer machine and fail under ``CI=true``.
"""

from __future__ import annotations

import os
import subprocess

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.conftest import REPO, require_tool
from tests.support.controller import NET, SRC, kubeconfig, programmed, start, wait_for


@pytest.fixture()
def kubectl(api, tmp_path):
    binary = require_tool("kubectl")
    env = {"KUBECONFIG": kubeconfig(api, tmp_path / "kubeconfig"), "HOME": str(tmp_path),
           "PATH": os.environ.get("PATH", "")}

    def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([binary, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
        if ok:
            assert proc.returncode == 0, proc.stderr
        return proc

    return run


def _custom(server) -> client.CustomObjectsApi:
    cfg = client.Configuration()
    cfg.host = server.url
    return client.CustomObjectsApi(client.ApiClient(cfg))


def test_kubectl_applies_crds_and_sources_and_gets_printer_columns(api, kubectl):
    out = kubectl("apply", "--server-side", "-f", "schemas/").stdout
    assert "llmroutes.istio.alibabacloud.com serverside-applied" in out
    kubectl("apply", "--server-side", "-f", "samples/seed/")
    assert api.get(SRC, "llmroutes", "default", "demo-llm-server")["metadata"]["managedFields"][0]["manager"] == \
        "kubectl"
    ctrl = start(api)
    try:
        wait_for(lambda: programmed(api, "LLMRoute", "demo-llm-server"), what="programmed")
        table = kubectl("get", "llmroutes", "-A").stdout.splitlines()
        assert table[0].split() == ["NAMESPACE", "NAME", "HOST", "PROGRAMMED", "AGE"]
        row = next(line.split() for line in table if "demo-llm-server" in line)
        assert row[:4] == ["default", "demo-llm-server", "demo-llm-server", "True"]
        every = kubectl("get", "llmc", "-A").stdout  # the category covers both kinds
        assert "llmprovider.istio.alibabacloud.com/moonshot" in every and "llmroute.istio.alibabacloud.com" in every
        assert "GATEWAYS" in kubectl("get", "llmr", "-o", "wide").stdout
        yaml_out = kubectl("get", "llmp", "moonshot", "-o", "yaml").stdout
        assert "host: api.moonshot.cn" in yaml_out and "type: Programmed" in yaml_out
    finally:
        ctrl.stop()


def test_kubectl_is_refused_a_write_into_a_missing_namespace(api, kubectl):
    kubectl("apply", "--server-side", "-f", "schemas/")
    manifest = REPO / "samples" / "seed" / "moonshot.yaml"
    proc = kubectl("apply", "--server-side", "-n", "nowhere", "-f", str(manifest), ok=False)
    assert proc.returncode != 0 and 'namespaces "nowhere" not found' in proc.stderr


def test_server_side_apply_keeps_a_second_managers_fields(api):
    custom = _custom(api)
    body = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "vs", "namespace": "default", "labels": {"a": "1"}},
            "spec": {"hosts": ["x"], "http": [{"route": [{"destination": {"host": "x"}}]}]}}

    def apply(obj, manager, force=False):
        return custom.patch_namespaced_custom_object(
            "networking.istio.io", "v1", "default", "virtualservices", "vs", obj, field_manager=manager,
            force=force, _content_type="application/apply-patch+yaml")

    apply(body, "first")
    apply({**body, "metadata": {"name": "vs", "namespace": "default", "labels": {"b": "2"}},
           "spec": {"exportTo": ["."]}}, "second")
    reapplied = apply({**body, "metadata": {"name": "vs", "namespace": "default"}}, "first")  # drops label a
    assert reapplied["spec"]["exportTo"] == ["."] and reapplied["metadata"]["labels"] == {"b": "2"}
    assert {e["manager"] for e in reapplied["metadata"]["managedFields"]} == {"first", "second"}
    with pytest.raises(ApiException) as exc:
        apply({**body, "spec": {"hosts": ["y"]}}, "second")
    assert exc.value.status == 409
    taken = apply({**body, "spec": {"hosts": ["y"]}}, "second", force=True)
    assert taken["spec"]["hosts"] == ["y"]
    before = api.get(NET, "virtualservices", "default", "vs")["metadata"]["resourceVersion"]
    apply({**body, "spec": {"hosts": ["y"]}}, "second", force=True)
    assert api.get(NET, "virtualservices", "default", "vs")["metadata"]["resourceVersion"] == before


def test_status_subresource_and_generation(api):
    custom = _custom(api)
    api.put_object(SRC, "llmroutes", {"apiVersion": "istio.alibabacloud.com/v1beta1", "kind": "LLMRoute",
                                      "metadata": {"name": "r", "namespace": "default"}, "spec": {"host": "h"}})
    custom.patch_namespaced_custom_object_status("istio.alibabacloud.com", "v1beta1", "default", "llmroutes", "r",
                                                 {"status": {"x": 1}, "spec": {"host": "ignored"}})
    obj = api.get(SRC, "llmroutes", "default", "r")
    assert obj["status"] == {"x": 1} and obj["spec"] == {"host": "h"} and obj["metadata"]["generation"] == 1
    custom.patch_namespaced_custom_object(
        "istio.alibabacloud.com", "v1beta1", "default", "llmroutes", "r",
        {"apiVersion": "istio.alibabacloud.com/v1beta1", "kind": "LLMRoute",
         "metadata": {"name": "r", "namespace": "default"}, "spec": {"host": "h2"}, "status": {"x": 2}},
        field_manager="m", force=True, _content_type="application/apply-patch+yaml")
    obj = api.get(SRC, "llmroutes", "default", "r")
    assert obj["status"] == {"x": 1} and obj["spec"]["host"] == "h2" and obj["metadata"]["generation"] == 2


def test_unknown_fields_are_pruned_once_the_crd_is_stored(api, kubectl):
    kubectl("apply", "--server-side", "-f", "schemas/")
    custom = _custom(api)
    body = {"apiVersion": "istio.alibabacloud.com/v1beta1", "kind": "LLMProvider",
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"host": "h", "path": "/v1", "bogus": True, "tls": {"mode": "SIMPLE", "nope": 1}}}
    custom.patch_namespaced_custom_object("istio.alibabacloud.com", "v1beta1", "default", "llmproviders", "p", body,
                                          field_manager="m", _content_type="application/apply-patch+yaml")
    assert api.get(SRC, "llmproviders", "default", "p")["spec"] == {"host": "h", "path": "/v1", "tls": {"mode": "SIMPLE"}}
    with pytest.raises(ApiException) as exc:
        custom.patch_namespaced_custom_object("istio.alibabacloud.com", "v1beta1", "default", "llmproviders", "p",
                                              body, field_manager="m", field_validation="Strict",
                                              _content_type="application/apply-patch+yaml")
    assert exc.value.status == 400 and "spec.bogus" in exc.value.body and "spec.tls.nope" in exc.value.body


def test_label_selectors_it_cannot_evaluate_are_refused(api):
    custom = _custom(api)
    for name, labels in (("a", {"app": "x", "tier": "1"}), ("b", {"app": "y"})):
        api.put_object(NET, "virtualservices", {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                                                "metadata": {"name": name, "namespace": "default", "labels": labels},
                                                "spec": {}})

    def names(selector):
        items = custom.list_namespaced_custom_object("networking.istio.io", "v1", "default", "virtualservices",
                                                     label_selector=selector)["items"]
        return [o["metadata"]["name"] for o in items]

    assert names("app in (x, z),tier") == ["a"]
    assert names("app!=x") == ["b"] and names("!tier") == ["b"] and names("app notin (x)") == ["b"]
    for bad in ("app in x", "app=(x", "=x", "app>1"):
        with pytest.raises(ApiException) as exc:
            names(bad)
        assert exc.value.status == 400


def test_writes_into_missing_namespaces_404_and_connection_faults(api):
    custom = _custom(api)
    body = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "vs", "namespace": "nowhere"}, "spec": {}}
    with pytest.raises(ApiException) as exc:
        custom.patch_namespaced_custom_object("networking.istio.io", "v1", "nowhere", "virtualservices", "vs", body,
                                              field_manager="m", _content_type="application/apply-patch+yaml")
    assert exc.value.status == 404
    api.fail("GET", "/virtualservices", "reset", times=10)  # more than urllib3's retries
    with pytest.raises(Exception) as reset:
        custom.list_namespaced_custom_object("networking.istio.io", "v1", "default", "virtualservices",
                                             _request_timeout=2)
    assert not isinstance(reset.value, ApiException)
    api.outage(1.0, "hang")
    with pytest.raises(Exception) as hung:
        custom.list_namespaced_custom_object("networking.istio.io", "v1", "default", "virtualservices",
                                             _request_timeout=0.3)
    assert not isinstance(hung.value, ApiException)


def test_writes_honour_the_timeout_parameter_as_kube_apiserver_does(api):
    """kube-apiserver gives a request the deadline receipt + ``timeout`` (WithRequestDeadline): a
    write still queued at its deadline is answered 504 and never applied; a malformed value is 400."""
    import json
    import urllib.error
    import urllib.request

    api.put_object(NET, "serviceentries", {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
                                           "metadata": {"name": "se", "namespace": "default"},
                                           "spec": {"hosts": ["a.example.com"]}})

    def patch(timeout: str, host: str) -> tuple[int, dict]:
        req = urllib.request.Request(
            f"{api.url}/{NET}/namespaces/default/serviceentries/se?timeout={timeout}", method="PATCH",
            data=json.dumps({"spec": {"hosts": [host]}}).encode(),
            headers={"content-type": "application/merge-patch+json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    api.delay("PATCH", 0.5)  # every PATCH waits longer than 0.2 s before it is handled
    code, body = patch("0.2s", "late.example.com")
    assert (code, body["reason"]) == (504, "Timeout"), body
    assert api.get(NET, "serviceentries", "default", "se")["spec"]["hosts"] == ["a.example.com"]
    assert patch("30s", "b.example.com")[0] == 200
    assert api.get(NET, "serviceentries", "default", "se")["spec"]["hosts"] == ["b.example.com"]
    code, body = patch("soon", "c.example.com")
    assert code == 400 and "invalid timeout" in body["message"]


def test_a_held_request_is_unanswered_until_it_is_answered_even_when_its_client_left(api):
    """``unanswered`` lists a client's requests still held (what a test waits out instead of
    sleeping for the hold); a request leaves it once answered, also when its client gave up."""
    import threading
    import time
    import urllib.request

    api.hold("held-client", 1.0)
    url = f"{api.url}/{NET}/namespaces/default/serviceentries"

    def get(agent: str, timeout: float) -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(url, headers={"user-agent": agent}), timeout=timeout)
        except OSError:
            pass  # the client that gives up first

    quitter = threading.Thread(target=get, args=("held-client/quitter", 0.1))
    patient = threading.Thread(target=get, args=("held-client/patient", 30))
    quitter.start()
    patient.start()
    wait_for(lambda: len(api.unanswered("held-client", time.monotonic())) == 2, what="both held")
    assert api.unanswered("held-client", received_before=0.0) == []  # received later than that
    get("other-client", 30)  # not held, and answered: never listed
    wait_for(lambda: not api.unanswered("held-client", time.monotonic()), what="both answered")
    quitter.join()
    patient.join()
