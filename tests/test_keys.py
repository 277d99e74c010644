"""API keys never sit in generated config when apiKeySecretRef is used, and `llmc mounts` says
exactly what to mount where. (Rotation by replacing the mounted file is tested in real Envoy in
test_envoy_e2e.py::test_key_from_mounted_secret_and_rotation.)"""

from __future__ import annotations

import json

import pytest
from ruamel.yaml import YAML
from typer.testing import CliRunner

from tests.conftest import REPO, TESTDATA

runner = CliRunner()
KEY = "sk-live-5ecret-value-that-must-not-leak"
SECRET = f"""apiVersion: v1
kind: Secret
metadata: {{name: llm-provider-keys, namespace: llm-apps}}
stringData: {{dashscope: {KEY}}}
"""
MODES = [[], ["--egress-gateway", "istio-system/istio-egressgateway"]]


@pytest.fixture()
def inputs(tmp_path):
    (tmp_path / "secret.yaml").write_text(SECRET)
    (tmp_path / "providers.yaml").write_text((REPO / "samples" / "secret-ref" / "dashscope.yaml").read_text())
    return str(tmp_path)


@pytest.mark.parametrize("mode", MODES, ids=["sidecar", "egress"])
def test_secret_value_appears_in_no_output(inputs, mode):
    runs = [["render", "-f", inputs, *mode], ["render", "-f", inputs, "-o", "json", *mode],
            ["render", "-f", inputs, "--emit", "ir", *mode], ["validate", "-f", inputs, *mode],
            ["validate", "-f", inputs, "-o", "json", *mode], ["mounts", "-f", inputs, *mode]]
    for args in runs:
        res = runner.invoke(app_(), args)
        assert res.exit_code == 0, (args, res.stderr)
        assert KEY not in res.stdout and KEY not in res.stderr, args
    rendered = runner.invoke(app_(), ["render", "-f", inputs, *mode]).stdout
    assert "/etc/llmc/secrets/llm-provider-keys/dashscope" in rendered


def app_():
    from compiler.cli import app

    return app


def test_literal_key_warns_where_it_is_visible(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("apiVersion: istio.alibabacloud.com/v1beta1\nkind: LLMProvider\nmetadata: {name: p}\n"
                 "spec:\n  host: a.example.com\n  path: /v1/chat/completions\n  configs:\n"
                 f"    defaultConfig: {{openAIConfig: {{apiKey: {KEY}}}}}\n")
    res = runner.invoke(app_(), ["validate", "-f", str(f)])
    assert res.exit_code == 0 and "LLMC215" in res.stderr and "EnvoyFilter" in res.stderr
    assert KEY not in res.stderr


def test_mounts_sidecar_annotations():
    res = runner.invoke(app_(), ["mounts", "-f", str(REPO / "samples" / "secret-ref")])
    docs = [d for d in YAML(typ="safe").load_all(res.stdout) if d]
    assert len(docs) == 1
    ann = docs[0]["spec"]["template"]["metadata"]["annotations"]
    assert json.loads(ann["sidecar.istio.io/userVolume"]) == [
        {"name": "llmc-llm-provider-keys", "secret": {"secretName": "llm-provider-keys"}}]
    assert json.loads(ann["sidecar.istio.io/userVolumeMount"]) == [
        {"name": "llmc-llm-provider-keys", "mountPath": "/etc/llmc/secrets/llm-provider-keys", "readOnly": True}]
    assert "namespace llm-apps" in res.stdout


def test_mounts_egress_gateway_deployment_patch():
    res = runner.invoke(app_(), ["mounts", "-f", str(REPO / "samples" / "secret-ref"),
                                 "--egress-gateway", "istio-system/istio-egressgateway"])
    docs = [d for d in YAML(typ="safe").load_all(res.stdout) if d]
    assert len(docs) == 1, "in egress mode only the gateway needs the Secret"
    spec = docs[0]["spec"]["template"]["spec"]
    assert spec["volumes"] == [{"name": "llmc-llm-provider-keys", "secret": {"secretName": "llm-provider-keys"}}]
    assert spec["containers"] == [{"name": "istio-proxy", "volumeMounts": [
        {"name": "llmc-llm-provider-keys", "mountPath": "/etc/llmc/secrets/llm-provider-keys", "readOnly": True}]}]
    assert "patch deployment istio-egressgateway" in res.stdout and "-n istio-system" in res.stdout


def test_mounts_ingress_gateway():
    res = runner.invoke(app_(), ["mounts", "-f", str(TESTDATA / "golden" / "ingress-gateway.in.yaml")])
    assert "Gateway pods istio=ingressgateway in namespace istio-system need Secret(s) llm-keys" in res.stdout


def test_source_labels_rejected_in_egress_mode():
    bad = TESTDATA / "golden" / "in-mesh-and-plain-http.in.yaml"
    res = runner.invoke(app_(), ["render", "-f", str(bad), "--egress-gateway", "istio-system/istio-egressgateway"])
    assert res.exit_code == 1 and "LLMC216" in res.stderr and res.stdout == ""


@pytest.mark.parametrize("value", ["istio-system", "a/b/c", "Istio/Gw"])
def test_bad_egress_flag_is_a_usage_error(value):
    res = runner.invoke(app_(), ["render", "-f", str(REPO / "samples"), "--egress-gateway", value])
    assert res.exit_code == 2


def test_a_key_no_header_can_carry_is_refused_without_being_printed():
    """LLMC280 (review 9): a literal key with a line break, a control or non-ASCII character, or
    blanks around it is refused where written, and neither it nor its sendable part is printed."""
    case = str(TESTDATA / "invalid" / "unsendable-key.yaml")
    for args in (["validate", "-f", case], ["validate", "-f", case, "-o", "json"], ["render", "-f", case]):
        res = runner.invoke(app_(), args)
        assert res.exit_code == 1 and res.stdout.count("LLMC280") + res.stderr.count("LLMC280") == 4, args
        for part in ("sk-newline-0000000000", "sk-ant-blank-00000000000", "sk-ant-good-000000000000",
                     "non-ascii", "azure-nul-0000000000"):
            assert part not in res.stdout and part not in res.stderr, (args, part)


@pytest.mark.parametrize("key", ["sk-nl-5ecret-0000001\n", "sk-bs\\5ecret-0000002", "sk-q'5ecret-0000003",
                                 "sk-dq\"5ecret-0000004", "sk-both'\"5ecret-0000005", "sk-tab\t5ecret-0000006",
                                 " sk-blank-5ecret-0000007 "])
def test_a_key_is_masked_in_the_escaped_form_a_message_prints(tmp_path, key):
    """A message that prints a value as Python or JSON does (LLMC104 prints the whole over-long
    apiKeys list) escapes a line break, a backslash or a quote: the key is masked in that form too
    (was: 'sk-...\\n' printed in clear, review 9)."""
    keys = [key] + [f"sk-other-5ecret-{i:07d}" for i in range(16)]
    f = tmp_path / "p.yaml"
    f.write_text("apiVersion: istio.alibabacloud.com/v1beta1\nkind: LLMProvider\nmetadata: {name: p}\n"
                 "spec:\n  host: a.example.com\n  path: /v1/chat/completions\n  configs:\n"
                 f"    defaultConfig: {{openAIConfig: {{apiKeys: {json.dumps(keys)}}}}}\n")
    core = key.strip().split("5ecret")[1]
    for args in (["validate", "-f", str(f)], ["validate", "-f", str(f), "-o", "json"]):
        res = runner.invoke(app_(), args)
        assert res.exit_code == 1 and "LLMC104" in res.stdout + res.stderr, res.stderr
        assert "5ecret" + core not in res.stdout + res.stderr, (args, res.stdout + res.stderr)
        assert "other-5ecret" not in res.stdout + res.stderr


def test_the_controllers_status_masks_literal_keys_from_the_first_stage():
    """The controller compiles objects read from the API server, not files: its diagnostics mask
    literal keys from the schema stage on, as the CLI's do (was: LLMC104 on an over-long apiKeys
    list put every key, in clear, into the LLMProvider's Accepted and Programmed conditions)."""
    from compiler.controller.reconcile import conditions, desired_state
    from compiler.resolve import Options

    keys = [f"sk-status-5ecret-{i:02d}" for i in range(17)]
    src = {"apiVersion": "istio.alibabacloud.com/v1beta1", "kind": "LLMProvider",
           "metadata": {"name": "p", "namespace": "default", "uid": "u1", "generation": 1},
           "spec": {"host": "a.example.com", "path": "/v1/chat/completions",
                    "configs": {"defaultConfig": {"openAIConfig": {"model": "m", "apiKeys": keys}}}}}
    outcome = desired_state([src], Options())
    conds = conditions(src, outcome, [], [], [], [])
    text = json.dumps(conds)
    assert "LLMC104" in text and "5ecret" not in text, text
