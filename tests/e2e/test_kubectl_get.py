"""`kubectl get`: output formats, label and field selectors, all namespaces, watches
and chunked lists, with the oldest and newest kubectl."""

import json
import re

import yaml

from support import parse_table


def configmap(name: str, labels: dict[str, str] | None = None, data: dict[str, str] | None = None) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": labels or {}},
        "data": data or {},
    }


def pod(name: str, labels: dict[str, str], node_name: str | None = None) -> dict:
    spec = {"containers": [{"name": "main", "image": "127.0.0.1:5000/tugboat/busybox:1"}]}
    if node_name:
        spec["nodeName"] = node_name
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels}, "spec": spec}


DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "web", "labels": {"app": "web"}},
    "spec": {
        "replicas": 2,
        "selector": {"matchLabels": {"app": "web"}},
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "127.0.0.1:5000/tugboat/busybox:1"}]},
        },
    },
}


def names(result) -> list[str]:
    """The lines of `-o name` output."""
    return result.stdout.split()


def make_selector_fixtures(tug, namespace: str) -> None:
    collection = f"/api/v1/namespaces/{namespace}/configmaps"
    tug.create(collection, configmap("a", {"e2e": "sel", "env": "prod", "tier": "web"}, {"k": "1"}))
    tug.create(collection, configmap("b", {"e2e": "sel", "env": "dev", "tier": "db"}))
    tug.create(collection, configmap("c", {"e2e": "sel", "env": "staging"}))
    tug.create(collection, configmap("d", {"e2e": "sel"}))


def test_kubectl_get_output_formats(kubectl, tug, namespace):
    make_selector_fixtures(tug, namespace)

    table = kubectl("get", "configmaps", "-n", namespace, "-l", "e2e=sel")
    rows = parse_table(table.stdout)
    assert list(rows[0]) == ["NAME", "DATA", "AGE"], table.stdout
    assert [(row["NAME"], row["DATA"]) for row in rows] == [("a", "1"), ("b", "0"), ("c", "0"), ("d", "0")]

    listed = yaml.safe_load(kubectl("get", "configmaps", "-n", namespace, "-l", "e2e=sel", "-o", "yaml").stdout)
    assert listed["apiVersion"] == "v1"
    assert listed["kind"] == "List"
    assert [item["metadata"]["name"] for item in listed["items"]] == ["a", "b", "c", "d"]
    assert all(item["kind"] == "ConfigMap" and item["apiVersion"] == "v1" for item in listed["items"])

    one = json.loads(kubectl("get", "configmap", "a", "-n", namespace, "-o", "json").stdout)
    assert one["kind"] == "ConfigMap"
    assert one["metadata"]["labels"] == {"e2e": "sel", "env": "prod", "tier": "web"}
    assert one["data"] == {"k": "1"}

    jsonpath = kubectl("get", "configmaps", "-n", namespace, "-l", "e2e=sel", "-o", "jsonpath={.items[*].metadata.name}")
    assert jsonpath.stdout == "a b c d"
    jsonpath = kubectl("get", "configmap", "a", "-n", namespace, "-o", "jsonpath={.metadata.labels.env}/{.data.k}")
    assert jsonpath.stdout == "prod/1"

    custom = kubectl(
        "get", "configmaps", "-n", namespace, "-l", "e2e=sel",
        "-o", "custom-columns=NAME:.metadata.name,ENV:.metadata.labels.env",
    )  # fmt: skip
    assert [line.split() for line in custom.stdout.splitlines()] == [
        ["NAME", "ENV"],
        ["a", "prod"],
        ["b", "dev"],
        ["c", "staging"],
        ["d", "<none>"],
    ]


def test_kubectl_get_wide_shows_the_extra_columns(kubectl, tug, namespace):
    tug.create(f"/apis/apps/v1/namespaces/{namespace}/deployments", DEPLOYMENT)

    narrow = parse_table(kubectl("get", "deployments", "-n", namespace).stdout)
    assert list(narrow[0]) == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]

    result = kubectl("get", "deployments", "-n", namespace, "-o", "wide")
    rows = parse_table(result.stdout)
    assert list(rows[0]) == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE", "CONTAINERS", "IMAGES", "SELECTOR"]
    assert len(rows) == 1, result.stdout
    row = rows[0]
    assert row["NAME"] == "web"
    # No pod of it can be ready: the server runs no agent.
    assert row["READY"] == "0/2"
    assert row["CONTAINERS"] == "web"
    assert row["IMAGES"] == "127.0.0.1:5000/tugboat/busybox:1"
    assert row["SELECTOR"] == "app=web"


def test_kubectl_get_label_selectors(kubectl, tug, namespace):
    make_selector_fixtures(tug, namespace)

    def selected(selector: str) -> list[str]:
        return names(kubectl("get", "configmaps", "-n", namespace, "-l", f"e2e=sel,{selector}", "-o", "name"))

    assert selected("env=prod") == ["configmap/a"]
    assert selected("env==prod") == ["configmap/a"]
    # != also selects the objects that lack the label.
    assert selected("env!=prod") == ["configmap/b", "configmap/c", "configmap/d"]
    assert selected("env in (prod,dev)") == ["configmap/a", "configmap/b"]
    assert selected("env notin (prod,dev)") == ["configmap/c", "configmap/d"]
    assert selected("tier") == ["configmap/a", "configmap/b"]
    assert selected("!tier") == ["configmap/c", "configmap/d"]
    assert selected("env=prod,tier=web") == ["configmap/a"]
    assert selected("env=prod,tier=db") == []

    # The long form and set-based syntax through --selector.
    result = kubectl("get", "configmaps", "-n", namespace, "--selector", "env in (staging)", "-o", "name")
    assert names(result) == ["configmap/c"]

    # Nothing matches: kubectl says so on stderr.
    none = kubectl("get", "configmaps", "-n", namespace, "-l", "env=nowhere")
    assert none.stdout == ""
    assert none.stderr.strip() == f"No resources found in {namespace} namespace."


def test_kubectl_get_field_selectors(kubectl, tug, namespace):
    make_selector_fixtures(tug, namespace)
    by_name = kubectl("get", "configmaps", "-n", namespace, "--field-selector", "metadata.name=b", "-o", "name")
    assert names(by_name) == ["configmap/b"]
    not_name = kubectl(
        "get", "configmaps", "-n", namespace, "-l", "e2e=sel", "--field-selector", "metadata.name!=b", "-o", "name"
    )  # fmt: skip
    assert names(not_name) == ["configmap/a", "configmap/c", "configmap/d"]

    pods = f"/api/v1/namespaces/{namespace}/pods"
    tug.create(pods, pod("on-a", {"e2e": "fs"}, node_name="node-a"))
    tug.create(pods, pod("on-b", {"e2e": "fs"}, node_name="node-b"))
    tug.create(pods, pod("unscheduled", {"e2e": "fs"}))
    running = tug.request(
        "PATCH",
        f"{pods}/on-a/status",
        {"status": {"phase": "Running"}},
        content_type="application/merge-patch+json",
    )
    assert running.status == 200, running

    def selected(selector: str) -> list[str]:
        return names(kubectl("get", "pods", "-n", namespace, "--field-selector", selector, "-o", "name"))

    assert selected("spec.nodeName=node-a") == ["pod/on-a"]
    assert selected("spec.nodeName=") == ["pod/unscheduled"]
    assert selected("spec.nodeName!=node-a") == ["pod/on-b", "pod/unscheduled"]
    assert selected("status.phase=Running") == ["pod/on-a"]
    # A new pod's phase is Pending.
    assert selected("status.phase=Pending") == ["pod/on-b", "pod/unscheduled"]
    assert selected("status.phase=Pending,spec.nodeName=node-b") == ["pod/on-b"]
    assert selected("status.phase=Running,spec.nodeName=node-b") == []

    unsupported = kubectl("get", "pods", "-n", namespace, "--field-selector", "spec.bogus=1", check=False)
    assert unsupported.returncode == 1
    # kubectl wraps the server's message: `Error from server (BadRequest): Unable to find
    # "/v1, Resource=pods" that match label selector "", field selector "spec.bogus=1": <message>`.
    assert unsupported.stderr.startswith("Error from server (BadRequest): "), unsupported.stderr
    assert unsupported.stderr.strip().endswith(": field label not supported: spec.bogus"), unsupported.stderr


def test_kubectl_get_all_namespaces(kubectl, tug, namespace, make_namespace):
    other = make_namespace("other")
    token = namespace[-6:]
    for ns, data in ((namespace, {}), (other, {"x": "1", "y": "2"})):
        tug.create(f"/api/v1/namespaces/{ns}/configmaps", configmap("shared", {"e2e-all": token}, data))

    result = kubectl("get", "configmaps", "-A", "-l", f"e2e-all={token}")
    rows = parse_table(result.stdout)
    assert list(rows[0]) == ["NAMESPACE", "NAME", "DATA", "AGE"], result.stdout
    assert sorted((row["NAMESPACE"], row["NAME"], row["DATA"]) for row in rows) == sorted(
        [(namespace, "shared", "0"), (other, "shared", "2")]
    )

    long_form = kubectl("get", "configmaps", "--all-namespaces", "-l", f"e2e-all={token}", "-o", "json")
    items = json.loads(long_form.stdout)["items"]
    assert sorted(item["metadata"]["namespace"] for item in items) == sorted([namespace, other])

    # A namespace field selector narrows an all-namespaces list to one namespace.
    narrowed = kubectl(
        "get", "configmaps", "-A", "-l", f"e2e-all={token}", "--field-selector", f"metadata.namespace={other}",
        "-o", "jsonpath={.items[*].metadata.namespace}",
    )  # fmt: skip
    assert narrowed.stdout == other


def test_kubectl_get_watch_prints_changes_as_they_happen(kubectl, tug, namespace):
    collection = f"/api/v1/namespaces/{namespace}/configmaps"
    # The label keeps out objects that controllers may add to the namespace (kube-root-ca.crt).
    tug.create(collection, configmap("first", {"e2e": "watch"}))

    with kubectl.start("get", "configmaps", "-n", namespace, "-l", "e2e=watch", "--watch") as watch:
        assert watch.next_line().split() == ["NAME", "DATA", "AGE"]
        assert watch.next_line().split()[:2] == ["first", "0"]

        tug.create(collection, configmap("second", {"e2e": "watch"}, {"a": "1"}))
        assert watch.next_line().split()[:2] == ["second", "1"]

        patched = tug.request(
            "PATCH", f"{collection}/second", {"data": {"b": "2"}}, content_type="application/merge-patch+json"
        )
        assert patched.status == 200, patched
        assert watch.next_line().split()[:2] == ["second", "2"]

        assert tug.request("DELETE", f"{collection}/first").status == 200
        assert watch.next_line().split()[:2] == ["first", "0"]
        assert watch.process.poll() is None, "kubectl get --watch ended on its own"


def test_kubectl_get_watch_with_event_types(kubectl, tug, namespace):
    collection = f"/api/v1/namespaces/{namespace}/configmaps"
    tug.create(collection, configmap("first", {"e2e": "watch"}))

    with kubectl.start(
        "get", "configmaps", "-n", namespace, "-l", "e2e=watch", "--watch", "--output-watch-events"
    ) as watch:
        assert watch.next_line().split() == ["EVENT", "NAME", "DATA", "AGE"]
        assert watch.next_line().split()[:3] == ["ADDED", "first", "0"]

        tug.create(collection, configmap("ignored", {"e2e": "other"}))
        tug.create(collection, configmap("second", {"e2e": "watch"}))
        assert watch.next_line().split()[:3] == ["ADDED", "second", "0"]

        tug.request("PATCH", f"{collection}/first", {"data": {"k": "v"}}, content_type="application/merge-patch+json")
        assert watch.next_line().split()[:3] == ["MODIFIED", "first", "1"]

        # Relabelled out of the selector: a watcher with a selector sees it go.
        tug.request(
            "PATCH",
            f"{collection}/second",
            {"metadata": {"labels": {"e2e": "other"}}},
            content_type="application/merge-patch+json",
        )
        assert watch.next_line().split()[:3] == ["DELETED", "second", "0"]

        tug.request("DELETE", f"{collection}/first")
        assert watch.next_line().split()[:3] == ["DELETED", "first", "1"]


def test_a_metadata_watch_reports_partial_object_metadata_as_label_changes_decide(tug, namespace):
    """What the garbage collector and other metadata informers watch: events carry only
    `PartialObjectMetadata`, and a label selector still turns relabelling into DELETED."""
    collection = f"/api/v1/namespaces/{namespace}/configmaps"
    start = tug.request("GET", collection).json()["metadata"]["resourceVersion"]
    tug.create(collection, configmap("meta", {"e2e": "meta"}, {"big": "x" * 1000}))
    tug.create(collection, configmap("unlabelled", {"e2e": "other"}))
    tug.request("PATCH", f"{collection}/meta", {"data": {"k": "v"}}, content_type="application/merge-patch+json")
    relabelled = tug.request(
        "PATCH", f"{collection}/meta", {"metadata": {"labels": {"e2e": "gone"}}},
        content_type="application/merge-patch+json",
    )  # fmt: skip
    assert relabelled.status == 200, relabelled
    accept = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
    resp = tug.request(
        "GET", f"{collection}?watch=true&labelSelector=e2e%3Dmeta&resourceVersion={start}&timeoutSeconds=2",
        headers={"Accept": accept},
    )  # fmt: skip
    assert resp.status == 200, resp
    events = [json.loads(line) for line in resp.body.decode().splitlines() if line]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "meta"), ("MODIFIED", "meta"), ("DELETED", "meta"),
    ], events  # fmt: skip
    for event in events:
        assert event["object"]["kind"] == "PartialObjectMetadata" and event["object"]["apiVersion"] == "meta.k8s.io/v1"
        assert set(event["object"]) == {"kind", "apiVersion", "metadata"}, event
    assert events[-1]["object"]["metadata"]["resourceVersion"] == relabelled.json()["metadata"]["resourceVersion"]
    assert events[-1]["object"]["metadata"]["labels"] == {"e2e": "gone"}


def test_kubectl_get_chunk_size_lists_every_object_once(kubectl, tug, namespace):
    collection = f"/api/v1/namespaces/{namespace}/configmaps"
    expected = [f"cm-{i:02d}" for i in range(30)]
    for name in expected:
        tug.create(collection, configmap(name, {"e2e": "chunk"}))

    result = kubectl("get", "configmaps", "-n", namespace, "-l", "e2e=chunk", "--chunk-size=7", "-v=6")
    rows = parse_table(result.stdout)
    assert [row["NAME"] for row in rows] == expected
    assert result.stdout.count("NAME") == 1, "the table header is printed once"

    # kubectl asked for 5 pages of at most 7: the first without a continue token.
    # -v=6 logs each request's URL (1.27: `GET https://...`, 1.36: `url="https://..."`).
    requests = re.findall(r"https://[^\s\"]+/configmaps\?([^\s\"]+)", result.stderr)
    pages = [query for query in requests if "limit=7" in query]
    assert len(pages) == 5, requests
    assert "continue=" not in pages[0]
    assert all("continue=" in query for query in pages[1:]), pages

    as_names = kubectl("get", "configmaps", "-n", namespace, "-l", "e2e=chunk", "--chunk-size=7", "-o", "name")
    assert names(as_names) == [f"configmap/{name}" for name in expected]
