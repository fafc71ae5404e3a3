"""Everyday kubectl commands against the server, with the oldest and newest kubectl."""

import json

import yaml

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels:
    app: web
spec:
  replicas: {replicas}
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: web
        image: 127.0.0.1:5000/tugboat/busybox:1
        command: ["httpd", "-f", "-p", "8080"]
        env:
{env}
"""


def deployment_manifest(replicas: int, env: dict[str, str]) -> str:
    env_yaml = "".join(f"        - name: {k}\n          value: {v}\n" for k, v in env.items())
    return DEPLOYMENT.format(replicas=replicas, env=env_yaml.rstrip("\n"))


def test_kubectl_create_get_delete_configmap(kubectl, namespace):
    created = kubectl("create", "configmap", "x", "--from-literal=a=b", "-n", namespace)
    assert created.stdout.strip() == "configmap/x created"

    got = json.loads(kubectl("get", "configmap", "x", "-n", namespace, "-o", "json").stdout)
    assert got["apiVersion"] == "v1"
    assert got["kind"] == "ConfigMap"
    assert got["data"] == {"a": "b"}
    meta = got["metadata"]
    assert meta["name"] == "x"
    assert meta["namespace"] == namespace
    for key in ("uid", "resourceVersion", "creationTimestamp"):
        assert meta.get(key), f"metadata.{key} missing: {meta}"

    deleted = kubectl("delete", "configmap", "x", "-n", namespace)
    # Newer kubectl appends ` from <ns> namespace`; 1.27 ends at `deleted`.
    assert deleted.stdout.startswith('configmap "x" deleted'), deleted.stdout

    missing = kubectl("get", "configmap", "x", "-n", namespace, check=False)
    assert missing.returncode == 1, missing
    assert missing.stdout == ""
    assert 'Error from server (NotFound): configmaps "x" not found' in missing.stderr.splitlines(), missing.stderr


def test_secret_string_data_is_accepted_by_create_and_apply_and_stored_as_data(kubectl, namespace):
    # kubectl 1.27+ asks for strict field validation: the write-only stringData is a known field.
    manifest = yaml.safe_dump(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "plain", "namespace": namespace},
         "stringData": {"password": "s3cret"}, "data": {"user": "YWRtaW4="}}  # fmt: skip
    )
    created = kubectl("create", "-f", "-", input=manifest)
    assert created.stdout.strip() == "secret/plain created", created
    applied = kubectl("apply", "-f", "-", input=manifest.replace("s3cret", "changed"))
    assert applied.stdout.strip() == "secret/plain configured", applied
    got = json.loads(kubectl("get", "secret", "plain", "-n", namespace, "-o", "json").stdout)
    assert got["data"] == {"password": "Y2hhbmdlZA==", "user": "YWRtaW4="}
    assert "stringData" not in got
    unknown = kubectl("create", "-f", "-", input=manifest.replace("stringData", "stringDatum"), check=False)
    assert 'unknown field "stringDatum"' in unknown.stderr, unknown


def test_kubectl_apply_twice_then_get_deployment_yaml(kubectl, namespace):
    first = deployment_manifest(1, {"GREETING": "hello"})
    second = deployment_manifest(3, {"GREETING": "hello", "COLOR": "blue"})

    applied = kubectl("apply", "-n", namespace, "-f", "-", input=first)
    assert applied.stdout.strip() == "deployment.apps/web created"
    applied = kubectl("apply", "-n", namespace, "-f", "-", input=second)
    assert applied.stdout.strip() == "deployment.apps/web configured"
    applied = kubectl("apply", "-n", namespace, "-f", "-", input=second)
    assert applied.stdout.strip() == "deployment.apps/web unchanged"

    live = yaml.safe_load(kubectl("get", "deployment", "web", "-n", namespace, "-o", "yaml").stdout)
    assert live["kind"] == "Deployment"
    assert live["apiVersion"] == "apps/v1"
    assert live["spec"]["replicas"] == 3
    container = live["spec"]["template"]["spec"]["containers"][0]
    assert container["env"] == [
        {"name": "GREETING", "value": "hello"},
        {"name": "COLOR", "value": "blue"},
    ]
    # The spec changed once after creation: generation 1 -> 2; "unchanged" sent nothing.
    assert live["metadata"]["generation"] == 2
    last_applied = json.loads(
        live["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
    )
    assert last_applied["spec"]["replicas"] == 3
    assert last_applied["spec"]["template"]["spec"]["containers"][0]["env"][1] == {
        "name": "COLOR",
        "value": "blue",
    }


def test_kubectl_get_pods_all_namespaces_empty(kubectl, fresh_server):
    # A fresh server with no agent runs no pods, so the listing is empty.
    result = kubectl.for_server(fresh_server)("get", "pods", "--all-namespaces")
    assert result.stdout == ""
    assert "No resources found" in result.stderr.splitlines(), result.stderr
