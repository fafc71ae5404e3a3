"""kubectl commands that change objects: label, annotate, scale, patch, edit, delete and
server-side dry runs, with the oldest and newest kubectl."""

import json
import stat

import yaml


def configmap(name: str, labels=None, annotations=None, data=None) -> dict:
    meta = {"name": name, "labels": labels or {}}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data or {}}


def deployment(replicas: int = 2) -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [
                        {
                            "name": "web",
                            "image": "127.0.0.1:5000/tugboat/busybox:1",
                            "command": ["httpd", "-f", "-p", "8080"],
                        }
                    ]
                },
            },
        },
    }


def live(tug, path: str) -> dict:
    resp = tug.request("GET", path)
    assert resp.status == 200, resp
    return resp.json()


def deleted_line(kubectl, kind: str, name: str, namespace: str) -> str:
    """`kubectl delete`'s line: newer kubectl names the namespace, 1.27 does not."""
    if kubectl.version == "1.27":
        return f'{kind} "{name}" deleted'
    return f'{kind} "{name}" deleted from {namespace} namespace'


def test_kubectl_label_adds_refuses_overwrite_and_removes(kubectl, tug, namespace):
    path = f"/api/v1/namespaces/{namespace}/configmaps/x"
    tug.create(f"/api/v1/namespaces/{namespace}/configmaps", configmap("x", {"env": "prod"}))

    added = kubectl("label", "configmap", "x", "tier=web", "-n", namespace)
    assert added.stdout.strip() == "configmap/x labeled"
    assert live(tug, path)["metadata"]["labels"] == {"env": "prod", "tier": "web"}
    before = live(tug, path)["metadata"]["resourceVersion"]

    refused = kubectl("label", "configmap", "x", "env=dev", "-n", namespace, check=False)
    assert refused.returncode == 1
    assert refused.stderr.strip() == "error: 'env' already has a value (prod), and --overwrite is false"
    after = live(tug, path)
    assert after["metadata"]["labels"] == {"env": "prod", "tier": "web"}
    assert after["metadata"]["resourceVersion"] == before

    same = kubectl("label", "configmap", "x", "env=prod", "-n", namespace)
    assert same.stdout.strip() == "configmap/x not labeled"

    overwritten = kubectl("label", "configmap", "x", "env=dev", "--overwrite", "-n", namespace)
    assert overwritten.stdout.strip() == "configmap/x labeled"
    assert live(tug, path)["metadata"]["labels"] == {"env": "dev", "tier": "web"}

    removed = kubectl("label", "configmap", "x", "tier-", "-n", namespace)
    assert removed.stdout.strip() == "configmap/x unlabeled"
    assert live(tug, path)["metadata"]["labels"] == {"env": "dev"}


def test_kubectl_annotate_adds_refuses_overwrite_and_removes(kubectl, tug, namespace):
    path = f"/api/v1/namespaces/{namespace}/configmaps/x"
    tug.create(f"/api/v1/namespaces/{namespace}/configmaps", configmap("x", annotations={"note": "one"}))
    # kubectl 1.27 prints the verb itself, "annotate"; later versions "annotated".
    done = "configmap/x annotate" if kubectl.version == "1.27" else "configmap/x annotated"

    added = kubectl("annotate", "configmap", "x", "owner=team-a", "-n", namespace)
    assert added.stdout.strip() == done
    assert live(tug, path)["metadata"]["annotations"] == {"note": "one", "owner": "team-a"}

    refused = kubectl("annotate", "configmap", "x", "note=two", "-n", namespace, check=False)
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "error: --overwrite is false but found the following declared annotation(s): 'note' already has a value (one)"
    )
    assert live(tug, path)["metadata"]["annotations"]["note"] == "one"

    overwritten = kubectl("annotate", "configmap", "x", "note=two", "--overwrite", "-n", namespace)
    assert overwritten.stdout.strip() == done
    assert live(tug, path)["metadata"]["annotations"] == {"note": "two", "owner": "team-a"}

    removed = kubectl("annotate", "configmap", "x", "note-", "owner-", "-n", namespace)
    assert removed.stdout.strip() == done
    assert not live(tug, path)["metadata"].get("annotations")


def test_kubectl_scale_deployment_sets_spec_replicas(kubectl, tug, namespace):
    path = f"/apis/apps/v1/namespaces/{namespace}/deployments/web"
    created = tug.create(f"/apis/apps/v1/namespaces/{namespace}/deployments", deployment(replicas=2))
    assert created["metadata"]["generation"] == 1

    scaled = kubectl("scale", "deployment", "web", "--replicas=5", "-n", namespace)
    assert scaled.stdout.strip() == "deployment.apps/web scaled"
    after = live(tug, path)
    assert after["spec"]["replicas"] == 5
    assert after["metadata"]["generation"] == 2
    # Nothing else in the spec moved.
    assert after["spec"]["template"] == created["spec"]["template"]

    # The scale subresource shows the same, with the selector as a string.
    scale = live(tug, f"{path}/scale")
    assert scale["apiVersion"] == "autoscaling/v1"
    assert scale["kind"] == "Scale"
    assert scale["spec"] == {"replicas": 5}
    assert scale["status"]["selector"] == "app=web"

    jsonpath = kubectl("get", "deployment", "web", "-n", namespace, "-o", "jsonpath={.spec.replicas}")
    assert jsonpath.stdout == "5"

    # A precondition on the current count that does not hold changes nothing.
    refused = kubectl("scale", "deployment", "web", "--current-replicas=3", "--replicas=1", "-n", namespace, check=False)
    assert refused.returncode == 1
    assert refused.stderr.strip() == "error: Expected replicas to be 3, was 5"
    assert live(tug, path)["spec"]["replicas"] == 5

    to_zero = kubectl("scale", "deploy/web", "--current-replicas=5", "--replicas=0", "-n", namespace)
    assert to_zero.stdout.strip() == "deployment.apps/web scaled"
    assert live(tug, path)["spec"]["replicas"] == 0


def test_kubectl_patch_strategic_merge_and_json(kubectl, tug, namespace):
    deploy_path = f"/apis/apps/v1/namespaces/{namespace}/deployments/web"
    tug.create(f"/apis/apps/v1/namespaces/{namespace}/deployments", deployment())

    # Strategic merge (the default for built-in kinds): containers merge by name,
    # so the command survives an image change.
    container_patch = json.dumps(
        {"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "registry.local/web:2"}]}}}}
    )
    patched = kubectl("patch", "deployment", "web", "-n", namespace, "-p", container_patch)
    assert patched.stdout.strip() == "deployment.apps/web patched"
    containers = live(tug, deploy_path)["spec"]["template"]["spec"]["containers"]
    assert [(c["name"], c["image"], c["command"]) for c in containers] == [
        ("web", "registry.local/web:2", ["httpd", "-f", "-p", "8080"])
    ]

    # The same with --type=strategic, adding a second container by name.
    sidecar = json.dumps(
        {"spec": {"template": {"spec": {"containers": [{"name": "sidecar", "image": "registry.local/sidecar:1"}]}}}}
    )
    kubectl("patch", "deployment", "web", "-n", namespace, "--type=strategic", "-p", sidecar)
    containers = live(tug, deploy_path)["spec"]["template"]["spec"]["containers"]
    assert sorted(c["name"] for c in containers) == ["sidecar", "web"]

    # A JSON merge patch replaces lists whole: one container, without its command.
    merge = json.dumps(
        {"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "registry.local/web:3"}]}}}}
    )
    patched = kubectl("patch", "deployment", "web", "-n", namespace, "--type=merge", "-p", merge)
    assert patched.stdout.strip() == "deployment.apps/web patched"
    containers = live(tug, deploy_path)["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["web"]
    assert containers[0]["image"] == "registry.local/web:3"
    assert "command" not in containers[0]

    # A merge patch with null deletes a key.
    cm_path = f"/api/v1/namespaces/{namespace}/configmaps/x"
    tug.create(f"/api/v1/namespaces/{namespace}/configmaps", configmap("x", data={"a": "1", "b": "2"}))
    kubectl("patch", "configmap", "x", "-n", namespace, "--type=merge", "-p", '{"data": {"b": null, "c": "3"}}')
    assert live(tug, cm_path)["data"] == {"a": "1", "c": "3"}

    # A JSON patch: a list of operations.
    operations = json.dumps(
        [
            {"op": "replace", "path": "/data/a", "value": "one"},
            {"op": "add", "path": "/data/d", "value": "4"},
            {"op": "remove", "path": "/data/c"},
        ]
    )
    patched = kubectl("patch", "configmap", "x", "-n", namespace, "--type=json", "-p", operations)
    assert patched.stdout.strip() == "configmap/x patched"
    after = live(tug, cm_path)
    assert after["data"] == {"a": "one", "d": "4"}

    # A failing `test` operation rejects the whole patch.
    failing = json.dumps([{"op": "remove", "path": "/data/d"}, {"op": "test", "path": "/data/a", "value": "nope"}])
    refused = kubectl("patch", "configmap", "x", "-n", namespace, "--type=json", "-p", failing, check=False)
    assert refused.returncode == 1
    assert live(tug, cm_path)["metadata"]["resourceVersion"] == after["metadata"]["resourceVersion"]

    # A patch that changes nothing does not write: kubectl reports "(no change)".
    unchanged = kubectl("patch", "configmap", "x", "-n", namespace, "--type=merge", "-p", '{"data": {"a": "one"}}')
    assert unchanged.stdout.strip() == "configmap/x patched (no change)"
    assert live(tug, cm_path)["metadata"]["resourceVersion"] == after["metadata"]["resourceVersion"]


def editor_script(tmp_path, name: str, sed_expression: str) -> str:
    """An executable that kubectl runs as $KUBE_EDITOR: it rewrites the file in place."""
    script = tmp_path / name
    script.write_text(f"#!/bin/sh\nexec sed -i -e '{sed_expression}' \"$1\"\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_kubectl_edit_applies_the_editors_changes(kubectl, tug, namespace, tmp_path):
    cm_path = f"/api/v1/namespaces/{namespace}/configmaps/x"
    tug.create(f"/api/v1/namespaces/{namespace}/configmaps", configmap("x", data={"greeting": "hello"}))

    editor = editor_script(tmp_path, "edit-greeting.sh", "s/^  greeting: hello$/  greeting: edited/")
    edited = kubectl("edit", "configmap", "x", "-n", namespace, env={"KUBE_EDITOR": editor})
    assert edited.stdout.strip() == "configmap/x edited"
    assert live(tug, cm_path)["data"] == {"greeting": "edited"}

    # An editor that changes nothing: nothing is sent.
    before = live(tug, cm_path)["metadata"]["resourceVersion"]
    noop = editor_script(tmp_path, "noop.sh", "s/^no such line$//")
    cancelled = kubectl("edit", "configmap", "x", "-n", namespace, env={"KUBE_EDITOR": noop})
    assert "Edit cancelled, no changes made." in cancelled.stderr, cancelled
    assert live(tug, cm_path)["metadata"]["resourceVersion"] == before

    deploy_path = f"/apis/apps/v1/namespaces/{namespace}/deployments/web"
    tug.create(f"/apis/apps/v1/namespaces/{namespace}/deployments", deployment(replicas=2))
    editor = editor_script(tmp_path, "edit-replicas.sh", "s/^  replicas: 2$/  replicas: 4/")
    edited = kubectl("edit", "deployment", "web", "-n", namespace, env={"KUBE_EDITOR": editor})
    assert edited.stdout.strip() == "deployment.apps/web edited"
    assert live(tug, deploy_path)["spec"]["replicas"] == 4


def test_kubectl_delete_by_name_and_label(kubectl, tug, namespace):
    collection = f"/api/v1/namespaces/{namespace}/configmaps"
    for name in ("a", "b", "keep"):
        tug.create(collection, configmap(name, {"e2e": "keep" if name == "keep" else "delete"}))
    tug.create(f"/apis/apps/v1/namespaces/{namespace}/deployments", deployment())

    by_label = kubectl("delete", "configmaps", "-l", "e2e=delete", "-n", namespace)
    assert by_label.stdout.splitlines() == [
        deleted_line(kubectl, "configmap", "a", namespace),
        deleted_line(kubectl, "configmap", "b", namespace),
    ]
    left = tug.request("GET", f"{collection}?labelSelector=e2e").json()["items"]
    assert [item["metadata"]["name"] for item in left] == ["keep"]

    deleted = kubectl("delete", "deployment", "web", "-n", namespace)
    assert deleted.stdout.strip() == deleted_line(kubectl, "deployment.apps", "web", namespace)
    assert tug.request("GET", f"/apis/apps/v1/namespaces/{namespace}/deployments/web").status == 404

    missing = kubectl("delete", "configmap", "a", "-n", namespace, check=False)
    assert missing.returncode == 1
    assert missing.stderr.strip() == 'Error from server (NotFound): configmaps "a" not found'

    ignored = kubectl("delete", "configmap", "a", "--ignore-not-found", "-n", namespace)
    assert ignored.stdout == ""
    assert ignored.stderr == ""


def test_kubectl_create_dry_run_server_stores_nothing(kubectl, tug, namespace):
    collection = f"/api/v1/namespaces/{namespace}/configmaps"

    result = kubectl("create", "configmap", "dry", "--from-literal=a=b", "--dry-run=server", "-n", namespace)
    assert result.stdout.strip() == "configmap/dry created (server dry run)"
    assert tug.request("GET", f"{collection}/dry").status == 404

    # The server still ran defaulting and filled the system fields of what it would store.
    shown = kubectl(
        "create", "configmap", "dry", "--from-literal=a=b", "--dry-run=server", "-o", "json", "-n", namespace
    )  # fmt: skip
    obj = json.loads(shown.stdout)
    assert obj["data"] == {"a": "b"}
    assert obj["metadata"]["namespace"] == namespace
    assert obj["metadata"].get("uid")
    assert obj["metadata"].get("creationTimestamp")
    assert tug.request("GET", f"{collection}/dry").status == 404

    # And still validates: an invalid object is refused as a real create would be.
    invalid = kubectl("create", "configmap", "Not_Valid", "--dry-run=server", "-n", namespace, check=False)
    assert invalid.returncode == 1
    assert 'ConfigMap "Not_Valid" is invalid: metadata.name: Invalid value: "Not_Valid"' in invalid.stderr


def test_kubectl_apply_dry_run_server_stores_nothing(kubectl, tug, namespace):
    collection = f"/api/v1/namespaces/{namespace}/configmaps"
    manifest = yaml.safe_dump(configmap("dry", data={"a": "b"}))
    created = kubectl("apply", "--dry-run=server", "-f", "-", "-n", namespace, input=manifest)
    assert created.stdout.strip() == "configmap/dry created (server dry run)"
    assert tug.request("GET", f"{collection}/dry").status == 404

    existing = tug.create(collection, configmap("x", data={"a": "1"}))
    changed = yaml.safe_dump(configmap("x", data={"a": "2"}))
    configured = kubectl("apply", "--dry-run=server", "-f", "-", "-n", namespace, input=changed)
    assert configured.stdout.strip() == "configmap/x configured (server dry run)"
    after = live(tug, f"{collection}/x")
    assert after["data"] == {"a": "1"}
    assert after["metadata"]["resourceVersion"] == existing["metadata"]["resourceVersion"]


def test_kubectl_delete_dry_run_server_keeps_the_object(kubectl, tug, namespace):
    collection = f"/api/v1/namespaces/{namespace}/configmaps"
    existing = tug.create(collection, configmap("x", data={"a": "1"}))

    result = kubectl("delete", "configmap", "x", "--dry-run=server", "-n", namespace)
    assert result.stdout.strip() == deleted_line(kubectl, "configmap", "x", namespace) + " (server dry run)"
    after = live(tug, f"{collection}/x")
    assert after["metadata"]["uid"] == existing["metadata"]["uid"]
    assert after["metadata"]["resourceVersion"] == existing["metadata"]["resourceVersion"]
    assert "deletionTimestamp" not in after["metadata"]
