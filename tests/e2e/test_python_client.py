"""The official Python client (`kubernetes` on PyPI): CRUD, paged lists, watches."""

import json
import os
import time

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException


def configmap(name: str, labels: dict[str, str], data: dict[str, str]) -> client.V1ConfigMap:
    return client.V1ConfigMap(
        api_version="v1",
        kind="ConfigMap",
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        data=data,
    )


def continue_token(list_meta) -> str | None:
    # `continue` is a Python keyword: client 37 calls the field var_continue, older ones _continue.
    return getattr(list_meta, "var_continue", None) or getattr(list_meta, "_continue", None)


def api_error(excinfo) -> dict:
    """The Status object in an ApiException's body."""
    return json.loads(excinfo.value.body)


def test_python_client_configmap_crud_and_list_paging(kube_client, namespace):
    v1 = client.CoreV1Api(kube_client)

    # Create, read, replace, patch, conflict on a stale resourceVersion, delete.
    created = v1.create_namespaced_config_map(namespace, configmap("crud", {"e2e": "crud"}, {"k": "one"}))
    assert created.metadata.uid
    assert created.metadata.resource_version
    assert created.data == {"k": "one"}

    read = v1.read_namespaced_config_map("crud", namespace)
    assert read.metadata.uid == created.metadata.uid
    assert read.metadata.resource_version == created.metadata.resource_version

    read.data["k"] = "two"
    replaced = v1.replace_namespaced_config_map("crud", namespace, read)
    assert replaced.data == {"k": "two"}
    assert replaced.metadata.resource_version != created.metadata.resource_version

    patched = v1.patch_namespaced_config_map(
        "crud", namespace, {"data": {"extra": "x"}}, _content_type="application/merge-patch+json"
    )
    assert patched.data == {"k": "two", "extra": "x"}

    stale = configmap("crud", {"e2e": "crud"}, {"k": "stale"})
    stale.metadata.resource_version = created.metadata.resource_version
    with pytest.raises(ApiException) as conflict:
        v1.replace_namespaced_config_map("crud", namespace, stale)
    assert conflict.value.status == 409
    assert api_error(conflict)["reason"] == "Conflict"

    v1.delete_namespaced_config_map("crud", namespace)
    with pytest.raises(ApiException) as gone:
        v1.read_namespaced_config_map("crud", namespace)
    assert gone.value.status == 404
    status = api_error(gone)
    assert status["reason"] == "NotFound"
    assert status["message"] == 'configmaps "crud" not found'
    assert status["details"] == {"name": "crud", "kind": "configmaps"}

    # 25 objects listed 10 at a time: every one exactly once. The label keeps out
    # objects that controllers may add to the namespace (kube-root-ca.crt).
    expected = {f"cm-{i:02d}" for i in range(25)}
    for name in sorted(expected):
        v1.create_namespaced_config_map(namespace, configmap(name, {"e2e": "paging"}, {"n": name}))

    seen: list[str] = []
    page_sizes: list[int] = []
    token = None
    while True:
        page = v1.list_namespaced_config_map(
            namespace, label_selector="e2e=paging", limit=10, _continue=token
        )
        page_sizes.append(len(page.items))
        seen += [item.metadata.name for item in page.items]
        token = continue_token(page.metadata)
        if len(page_sizes) == 1:
            # Paged lists are a consistent snapshot: an object created after the
            # first page is not in the later ones.
            v1.create_namespaced_config_map(namespace, configmap("cm-late", {"e2e": "paging"}, {}))
        if not token:
            break
        assert len(page_sizes) < 10, f"continue tokens never end: pages {page_sizes}"

    assert all(size <= 10 for size in page_sizes), page_sizes
    assert len(page_sizes) >= 3, page_sizes
    assert sorted(seen) == sorted(expected), f"pages {page_sizes}: {seen}"

    everything = v1.list_namespaced_config_map(namespace, label_selector="e2e=paging")
    assert continue_token(everything.metadata) is None
    assert {item.metadata.name for item in everything.items} == expected | {"cm-late"}


def test_python_client_watch_resumes_from_resource_version(kube_client, namespace):
    v1 = client.CoreV1Api(kube_client)
    labels = {"e2e": "watch"}

    a = v1.create_namespaced_config_map(namespace, configmap("a", labels, {"v": "1"}))
    a_modified = v1.patch_namespaced_config_map(
        "a", namespace, {"data": {"v": "2"}}, _content_type="application/merge-patch+json"
    )
    v1.create_namespaced_config_map(namespace, configmap("b", labels, {}))
    v1.delete_namespaced_config_map("a", namespace)

    def watch_from(resource_version: str, count: int) -> list[tuple[str, str, str]]:
        """The first `count` events after `resource_version`: (type, name, resourceVersion)."""
        w = watch.Watch()
        events = []
        for event in w.stream(
            v1.list_namespaced_config_map,
            namespace,
            label_selector="e2e=watch",
            resource_version=resource_version,
            timeout_seconds=10,
            _request_timeout=30,
        ):
            if event["type"] == "BOOKMARK":
                continue
            obj = event["object"]
            events.append((event["type"], obj.metadata.name, obj.metadata.resource_version))
            if len(events) == count:
                w.stop()
        return events

    # Watching from a's creation replays everything after it, in order, and not
    # the creation itself.
    events = watch_from(a.metadata.resource_version, 3)
    assert [(kind, name) for kind, name, _ in events] == [
        ("MODIFIED", "a"),
        ("ADDED", "b"),
        ("DELETED", "a"),
    ], events
    assert events[0][2] == a_modified.metadata.resource_version

    # A watcher that stopped at the last event it saw resumes from there and
    # sees only what happened afterwards.
    last_seen = events[-1][2]
    v1.create_namespaced_config_map(namespace, configmap("c", labels, {}))
    resumed = watch_from(last_seen, 1)
    assert [(kind, name) for kind, name, _ in resumed] == [("ADDED", "c")], resumed

    # Watching from a list's resourceVersion starts right after the list.
    listed = v1.list_namespaced_config_map(namespace, label_selector="e2e=watch")
    assert sorted(item.metadata.name for item in listed.items) == ["b", "c"]
    v1.delete_namespaced_config_map("b", namespace)
    after_list = watch_from(listed.metadata.resource_version, 1)
    assert [(kind, name) for kind, name, _ in after_list] == [("DELETED", "b")], after_list


def test_python_client_list_paging_with_label_selectors(kube_client, namespace):
    v1 = client.CoreV1Api(kube_client)
    for i in range(30):
        labels = {"e2e": "selected-paging", "parity": "odd" if i % 2 else "even", "third": str(i % 3)}
        v1.create_namespaced_config_map(namespace, configmap(f"cm-{i:02d}", labels, {}))

    def pages(limit: int, label_selector: str, field_selector: str | None = None):
        """Every page of the list: ([names on each page], [list metadata of each page])."""
        names, metas, token = [], [], None
        while True:
            page = v1.list_namespaced_config_map(
                namespace,
                label_selector=label_selector,
                field_selector=field_selector,
                limit=limit,
                _continue=token,
            )
            names.append([item.metadata.name for item in page.items])
            metas.append(page.metadata)
            token = continue_token(page.metadata)
            if not token:
                return names, metas
            assert len(names) < 20, f"continue tokens never end: {names}"

    # Only the matching objects count towards a page: every page but the last is full.
    odd, metas = pages(4, "e2e=selected-paging,parity=odd")
    assert [len(page) for page in odd] == [4, 4, 4, 3], odd
    assert sum(odd, []) == [f"cm-{i:02d}" for i in range(1, 30, 2)]
    # With a selector the server cannot know how many remain, so it does not say.
    assert all(meta.remaining_item_count is None for meta in metas), metas

    # Set-based requirements and != across pages.
    chosen, _ = pages(3, "e2e=selected-paging,third in (0,1),parity!=odd")
    assert [len(page) for page in chosen] == [3, 3, 3, 1], chosen
    assert sum(chosen, []) == [f"cm-{i:02d}" for i in range(30) if i % 2 == 0 and i % 3 in (0, 1)]

    # A label and a field selector together.
    both, _ = pages(5, "e2e=selected-paging,third=2", field_selector="metadata.name!=cm-02")
    assert sum(both, []) == [f"cm-{i:02d}" for i in range(30) if i % 3 == 2 and i != 2]

    # Nothing matches: one empty page, no continue token.
    nothing, _ = pages(5, "e2e=selected-paging,parity=neither")
    assert nothing == [[]]

    # Without a selector a page says how many items follow it.
    total = len(v1.list_namespaced_config_map(namespace).items)
    first = v1.list_namespaced_config_map(namespace, limit=10)
    assert len(first.items) == 10
    assert first.metadata.remaining_item_count == total - 10


def test_bookmarks_of_a_quiet_watch_carry_a_recent_resource_version(kube_client, namespace):
    """An informer of a resource nobody writes must not fall behind: its bookmarks carry the
    revision up to which everything is known, so that resuming from one never meets a
    revision compaction has passed (a 410 and a full relist). As upstream, a watch that
    times out ends with a bookmark."""
    v1 = client.CoreV1Api(kube_client)
    # The namespace's one ConfigMap, the root CA publisher's, is written soon after it is made.
    deadline = time.monotonic() + 30
    while not (listed := v1.list_namespaced_config_map(namespace)).items:
        assert time.monotonic() < deadline, "kube-root-ca.crt was never published"
        time.sleep(0.1)
    start = listed.metadata.resource_version
    newest = 0
    for i in range(3):
        secret = client.V1Secret(metadata=client.V1ObjectMeta(name=f"elsewhere-{i}"))
        newest = int(v1.create_namespaced_secret(namespace, secret).metadata.resource_version)
    assert newest > int(start)

    response = v1.list_namespaced_config_map(
        namespace,
        watch=True,
        allow_watch_bookmarks=True,
        resource_version=start,
        timeout_seconds=3,
        _preload_content=False,
        _request_timeout=30,
    )
    events = [json.loads(line) for line in response.read().decode().splitlines() if line.strip()]
    assert [event["type"] for event in events] == ["BOOKMARK"], events
    bookmark = events[0]["object"]
    assert bookmark["kind"] == "ConfigMap"
    if os.environ.get("TUG_E2E_DATASTORE") == "etcd":
        # Debian's etcd 3.4.23 may answer a watch's progress request before events still
        # queued for it (etcd issues 15220 and 17507): the server asks only etcd 3.4.31, 3.5.13
        # and later, so here a bookmark carries the newest revision the watch itself delivered.
        assert int(bookmark["metadata"]["resourceVersion"]) >= int(start), (bookmark, start)
    else:
        assert int(bookmark["metadata"]["resourceVersion"]) >= newest, (bookmark, newest)

    # Resuming from the bookmark sees the next change and nothing before it.
    v1.create_namespaced_config_map(namespace, configmap("after-bookmark", {}, {}))
    resumed = v1.list_namespaced_config_map(
        namespace,
        watch=True,
        resource_version=bookmark["metadata"]["resourceVersion"],
        timeout_seconds=1,
        _preload_content=False,
        _request_timeout=30,
    )
    events = [json.loads(line) for line in resumed.read().decode().splitlines() if line.strip()]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "after-bookmark")], events


def test_watch_by_name_reports_only_that_object(kube_client, namespace):
    """A `metadata.name=` field selector on a watch (as the root CA publisher's informer uses)
    reports the changes of that object and of no other."""
    v1 = client.CoreV1Api(kube_client)
    start = v1.list_namespaced_config_map(namespace).metadata.resource_version
    v1.create_namespaced_config_map(namespace, configmap("other", {}, {}))
    v1.create_namespaced_config_map(namespace, configmap("chosen", {}, {"a": "1"}))
    v1.patch_namespaced_config_map("other", namespace, {"data": {"b": "2"}})
    v1.patch_namespaced_config_map("chosen", namespace, {"data": {"a": "2"}})
    v1.delete_namespaced_config_map("other", namespace)
    v1.delete_namespaced_config_map("chosen", namespace)
    response = v1.list_namespaced_config_map(
        namespace,
        watch=True,
        field_selector="metadata.name=chosen",
        resource_version=start,
        timeout_seconds=1,
        _preload_content=False,
        _request_timeout=30,
    )
    events = [json.loads(line) for line in response.read().decode().splitlines() if line.strip()]
    seen = [(e["type"], e["object"]["metadata"]["name"], (e["object"].get("data") or {}).get("a")) for e in events]
    assert seen == [("ADDED", "chosen", "1"), ("MODIFIED", "chosen", "2"), ("DELETED", "chosen", "2")], seen
