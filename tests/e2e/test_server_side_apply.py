"""Server-side apply and managedFields: `kubectl apply --server-side` (oldest and newest
kubectl), the Python client, raw HTTP, and Helm 4 (which applies server-side by default)."""

import json
import os
import subprocess
import time

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from support import TOOLS_BIN, require, unique_name

APPLY = "application/apply-patch+yaml"


def deployment(replicas: int = 1, containers=None, labels=None) -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "labels": labels if labels is not None else {"app": "web"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": containers or [web_container()]},
            },
        },
    }


def web_container() -> dict:
    return {"name": "web", "image": "127.0.0.1:5000/tugboat/busybox:1", "command": ["httpd", "-f", "-p", "8080"]}


def sidecar_container() -> dict:
    return {"name": "sidecar", "image": "127.0.0.1:5000/tugboat/busybox:1", "command": ["sleep", "3600"]}


def live(tug, path: str) -> dict:
    resp = tug.request("GET", path)
    assert resp.status == 200, resp
    return resp.json()


def settled(tug, path: str) -> dict:
    """The object once the controllers are done with it (the Deployment controller writes its
    revision annotation and status after a create): its resourceVersion held for a second."""
    last = live(tug, path)
    stable_since = time.monotonic()
    deadline = stable_since + 30
    while time.monotonic() < deadline:
        time.sleep(0.2)
        cur = live(tug, path)
        if cur["metadata"]["resourceVersion"] != last["metadata"]["resourceVersion"]:
            last, stable_since = cur, time.monotonic()
        elif time.monotonic() - stable_since >= 1.0:
            return cur
    pytest.fail(f"{path} kept changing for 30s")


def managers(obj: dict) -> dict:
    """manager name -> its managedFields entry."""
    return {e["manager"]: e for e in obj["metadata"].get("managedFields", [])}


def apply(kubectl, namespace: str, manifest: dict, *flags: str, check: bool = True):
    args = ("apply", "--server-side", *flags, "-n", namespace, "-f", "-")
    return kubectl(*args, input=yaml.safe_dump(manifest), check=check)


def test_kubectl_apply_server_side_twice_is_a_no_op(kubectl, tug, namespace):
    path = f"/apis/apps/v1/namespaces/{namespace}/deployments/web"
    first = apply(kubectl, namespace, deployment())
    assert first.stdout.strip() == "deployment.apps/web serverside-applied"
    created = live(tug, path)
    entry = managers(created)["kubectl"]
    assert (entry["operation"], entry["apiVersion"], entry["fieldsType"]) == ("Apply", "apps/v1", "FieldsV1")
    assert entry["fieldsV1"]["f:spec"]["f:replicas"] == {}
    container = entry["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"]['k:{"name":"web"}']
    assert container["."] == {} and container["f:image"] == {}
    # Defaults were filled in by the create path.
    assert created["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] == "IfNotPresent"
    created = settled(tug, path)

    second = apply(kubectl, namespace, deployment())
    assert second.stdout.strip() == "deployment.apps/web serverside-applied"
    again = live(tug, path)
    assert again["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    assert again["metadata"]["managedFields"] == created["metadata"]["managedFields"]

    shown = kubectl("get", "deployment", "web", "-n", namespace, "-o", "yaml", "--show-managed-fields")
    assert "manager: kubectl" in shown.stdout and "operation: Apply" in shown.stdout
    hidden = kubectl("get", "deployment", "web", "-n", namespace, "-o", "yaml")
    assert "managedFields" not in hidden.stdout


def test_conflicting_apply_fails_until_forced(kubectl, tug, namespace):
    path = f"/apis/apps/v1/namespaces/{namespace}/deployments/web"
    apply(kubectl, namespace, deployment(replicas=1))
    kubectl("patch", "deployment", "web", "-n", namespace, "-p", '{"spec":{"replicas":2}}')
    assert "kubectl-patch" in managers(live(tug, path))

    refused = apply(kubectl, namespace, deployment(replicas=3), check=False)
    assert refused.returncode == 1
    assert (
        'error: Apply failed with 1 conflict: conflict with "kubectl-patch" using apps/v1: .spec.replicas'
        in refused.stderr
    ), refused.stderr
    assert live(tug, path)["spec"]["replicas"] == 2

    forced = apply(kubectl, namespace, deployment(replicas=3), "--force-conflicts")
    assert forced.stdout.strip() == "deployment.apps/web serverside-applied"
    after = live(tug, path)
    assert after["spec"]["replicas"] == 3
    # The patcher owned nothing else, so its entry is gone.
    assert "kubectl-patch" not in managers(after)
    assert "f:replicas" in managers(after)["kubectl"]["fieldsV1"]["f:spec"]


def test_conflict_status_names_the_manager_and_the_field(tug, namespace):
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    # Without ?fieldManager=, a write is recorded under the User-Agent's product name.
    body = {"metadata": {"name": "c"}, "data": {"a": "1"}}
    created = tug.request("POST", base, body, headers={"User-Agent": "e2e-creator/1.0 (linux)"})
    assert created.status == 201, created
    entries = created.json()["metadata"]["managedFields"]
    assert [(e["manager"], e["operation"]) for e in entries] == [("e2e-creator", "Update")]
    body = json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "2"}})
    resp = tug.request("PATCH", f"{base}/c?fieldManager=me", body, content_type=APPLY)
    assert resp.status == 409, resp
    status = resp.json()
    assert status["reason"] == "Conflict"
    assert status["message"] == 'Apply failed with 1 conflict: conflict with "e2e-creator" using v1: .data.a'
    cause = status["details"]["causes"][0]
    assert cause["reason"] == "FieldManagerConflict" and cause["field"] == ".data.a"


def test_fields_removed_from_the_manifest_disappear(kubectl, tug, namespace):
    path = f"/apis/apps/v1/namespaces/{namespace}/deployments/web"
    manifest = deployment(labels={"app": "web", "tier": "front"})
    manifest["metadata"]["annotations"] = {"team": "blue"}
    apply(kubectl, namespace, manifest)
    assert live(tug, path)["metadata"]["labels"] == {"app": "web", "tier": "front"}

    apply(kubectl, namespace, deployment(labels={"app": "web"}))
    after = live(tug, path)
    assert after["metadata"]["labels"] == {"app": "web"}
    assert "team" not in (after["metadata"].get("annotations") or {})


def test_dropping_one_of_two_containers_removes_it(kubectl, tug, namespace):
    path = f"/apis/apps/v1/namespaces/{namespace}/deployments/web"
    apply(kubectl, namespace, deployment(containers=[web_container(), sidecar_container()]))
    names = [c["name"] for c in live(tug, path)["spec"]["template"]["spec"]["containers"]]
    assert names == ["web", "sidecar"]

    apply(kubectl, namespace, deployment(containers=[web_container()]))
    after = live(tug, path)
    assert [c["name"] for c in after["spec"]["template"]["spec"]["containers"]] == ["web"]
    owned = managers(after)["kubectl"]["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"]
    assert list(owned) == ['k:{"name":"web"}']


def test_writes_are_recorded_by_manager_and_an_empty_list_resets_them(kubectl, tug, namespace):
    path = f"/api/v1/namespaces/{namespace}/configmaps/c"
    kubectl("create", "configmap", "c", "--from-literal=a=1", "-n", namespace)
    kubectl("label", "configmap", "c", "tier=web", "-n", namespace)
    entries = managers(live(tug, path))
    assert set(entries) == {"kubectl-create", "kubectl-label"}
    assert entries["kubectl-create"]["operation"] == "Update"
    assert entries["kubectl-create"]["fieldsV1"] == {"f:data": {".": {}, "f:a": {}}}
    assert entries["kubectl-label"]["fieldsV1"] == {"f:metadata": {"f:labels": {".": {}, "f:tier": {}}}}

    # A client cannot make up entries that do not validate.
    entry = {"manager": "x" * 200, "operation": "Update", "apiVersion": "v1", "fieldsType": "FieldsV1"}
    bad = {"metadata": {"managedFields": [{**entry, "fieldsV1": {"f:data": {"f:a": {}}}}]}}
    resp = tug.request("PATCH", path, json.dumps(bad), content_type="application/merge-patch+json")
    assert resp.status == 422, resp
    assert "metadata.managedFields[0].manager: Too long" in resp.json()["message"]

    reset = tug.request("PATCH", path, '{"metadata":{"managedFields":[]}}', content_type="application/merge-patch+json")
    assert reset.status == 200, reset
    assert "managedFields" not in reset.json()["metadata"]
    # Untracked objects stay untracked until they are applied to.
    kubectl("label", "configmap", "c", "more=yes", "-n", namespace)
    assert "managedFields" not in live(tug, path)["metadata"]


def test_apply_without_field_manager_is_invalid(tug, namespace):
    body = json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}})
    resp = tug.request("PATCH", f"/api/v1/namespaces/{namespace}/configmaps/c", body, content_type=APPLY)
    assert resp.status == 422, resp
    status = resp.json()
    assert status["reason"] == "Invalid"
    assert status["message"] == (
        'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch'
    )

    wrong_kind = json.dumps({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "c"}})
    path = f"/api/v1/namespaces/{namespace}/configmaps/c?fieldManager=m"
    resp = tug.request("PATCH", path, wrong_kind, content_type=APPLY)
    assert (resp.status, resp.json()["message"]) == (400, "invalid object type: /v1, Kind=Secret")


def test_python_client_applies_yaml_and_gets_invalid_without_a_manager(kube_client, namespace):
    v1 = client.CoreV1Api(kube_client)
    manifest = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "py"}, "data": {"a": "1", "b": "2"}}
    created = v1.patch_namespaced_config_map("py", namespace, manifest, field_manager="py-e2e", _content_type=APPLY)
    assert created.data == {"a": "1", "b": "2"}
    assert [(m.manager, m.operation) for m in created.metadata.managed_fields] == [("py-e2e", "Apply")]

    manifest["data"] = {"a": "1"}
    updated = v1.patch_namespaced_config_map("py", namespace, manifest, field_manager="py-e2e", _content_type=APPLY)
    assert updated.data == {"a": "1"}

    with pytest.raises(ApiException) as invalid:
        v1.patch_namespaced_config_map("py", namespace, manifest, _content_type=APPLY)
    assert invalid.value.status == 422
    assert "fieldManager: Required value: is required for apply patch" in json.loads(invalid.value.body)["message"]


CHART_YAML = """\
apiVersion: v2
name: tiny
version: 0.1.0
appVersion: "1.0"
"""

CONFIGMAP_TEMPLATE = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-config
data:
  message: {{ .Values.message | quote }}
"""

DEPLOYMENT_TEMPLATE = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}-web
  labels:
    app.kubernetes.io/instance: {{ .Release.Name }}
spec:
  replicas: {{ .Values.replicas }}
  selector:
    matchLabels:
      app.kubernetes.io/instance: {{ .Release.Name }}
  template:
    metadata:
      labels:
        app.kubernetes.io/instance: {{ .Release.Name }}
    spec:
      containers:
        - name: web
          image: {{ .Values.image }}
          ports:
            - containerPort: 8080
          resources: {}
          securityContext: {}
"""

SERVICE_TEMPLATE = """\
apiVersion: v1
kind: Service
metadata:
  name: {{ .Release.Name }}-web
spec:
  selector:
    app.kubernetes.io/instance: {{ .Release.Name }}
  ports:
    - name: http
      port: 80
      targetPort: 8080
"""


def test_helm_install_upgrade_list_uninstall(tug, namespace, tmp_path):
    helm = TOOLS_BIN / "helm"
    require(helm.exists(), f"{helm} missing: run scripts/install-test-deps.sh")
    chart = tmp_path / "tiny"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(CHART_YAML)
    (chart / "values.yaml").write_text("replicas: 1\nmessage: hello\nimage: 127.0.0.1:5000/tugboat/busybox:1\n")
    (chart / "templates" / "configmap.yaml").write_text(CONFIGMAP_TEMPLATE)
    (chart / "templates" / "deployment.yaml").write_text(DEPLOYMENT_TEMPLATE)
    (chart / "templates" / "service.yaml").write_text(SERVICE_TEMPLATE)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("HELM_")},
        "KUBECONFIG": str(tug.kubeconfig),
        "HELM_CACHE_HOME": str(tmp_path / "helm-cache"),
        "HELM_CONFIG_HOME": str(tmp_path / "helm-config"),
        "HELM_DATA_HOME": str(tmp_path / "helm-data"),
    }
    release = unique_name("rel")[:20].rstrip("-")

    def run(*args: str) -> subprocess.CompletedProcess:
        command = [str(helm), *args, "-n", namespace]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
        assert result.returncode == 0, f"{' '.join(command)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
        return result

    installed = run("install", release, str(chart))
    assert "STATUS: deployed" in installed.stdout
    cm_path = f"/api/v1/namespaces/{namespace}/configmaps/{release}-config"
    deploy_path = f"/apis/apps/v1/namespaces/{namespace}/deployments/{release}-web"
    assert live(tug, cm_path)["data"] == {"message": "hello"}
    deploy = live(tug, deploy_path)
    assert deploy["spec"]["replicas"] == 1
    assert managers(deploy)["helm"]["operation"] == "Apply"
    svc_path = f"/api/v1/namespaces/{namespace}/services/{release}-web"
    service = live(tug, svc_path)
    assert service["spec"]["clusterIP"]


    upgraded = run("upgrade", release, str(chart), "--set", "replicas=2", "--set", "message=bye")
    assert "has been upgraded" in upgraded.stdout
    assert live(tug, cm_path)["data"] == {"message": "bye"}
    assert live(tug, deploy_path)["spec"]["replicas"] == 2
    # The service did not change: same object, same allocated address.
    after = live(tug, svc_path)
    assert (after["metadata"]["resourceVersion"], after["spec"]["clusterIP"]) == (
        service["metadata"]["resourceVersion"],
        service["spec"]["clusterIP"],
    )

    listed = json.loads(run("list", "-o", "json").stdout)
    assert [(r["name"], r["revision"], r["status"]) for r in listed] == [(release, "2", "deployed")]
    secrets = tug.request("GET", f"/api/v1/namespaces/{namespace}/secrets?labelSelector=owner%3Dhelm").json()["items"]
    names = sorted(s["metadata"]["name"] for s in secrets)
    assert names == [f"sh.helm.release.v1.{release}.v1", f"sh.helm.release.v1.{release}.v2"]

    run("uninstall", release)
    assert tug.request("GET", cm_path).status == 404
    assert tug.request("GET", deploy_path).status == 404
    assert tug.request("GET", svc_path).status == 404
    assert json.loads(run("list", "-o", "json").stdout) == []
