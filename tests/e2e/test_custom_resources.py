"""CustomResourceDefinitions and their custom resources: definitions become
established and served (discovery, OpenAPI, kubectl explain), custom resources are
validated against the schema, pruned and defaulted, have status and scale
subresources and printer columns, and go away with their definition or namespace.
Driven through kubectl (newest and oldest), raw requests and the Python client.

Every test makes definitions of its own, in a group of its own, so that tests (and
the two kubectl versions) never see each other's resources; kubectl is given the
fully qualified resource name (`crontabs.<group>`)."""

import json
import secrets

import pytest
import yaml
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from support import E2E_DATASTORE, parse_table, wait_for

CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


def crontab_crd(group: str, scope: str = "Namespaced") -> dict:
    """The CronTab definition of upstream's documentation, with a status and a scale
    subresource, printer columns, defaults and a second (served, not stored) version."""
    schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "required": ["cronSpec"],
                "properties": {
                    "cronSpec": {"type": "string", "pattern": r"^(\d+|\*)(/\d+)?(\s+(\d+|\*)(/\d+)?){4}$"},
                    "image": {"type": "string", "maxLength": 40},
                    "replicas": {"type": "integer", "minimum": 0, "maximum": 10, "default": 1},
                    "mode": {"type": "string", "enum": ["Fast", "Slow"]},
                    "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                },
            },
            "status": {
                "type": "object",
                "properties": {
                    "replicas": {"type": "integer"},
                    "labelSelector": {"type": "string"},
                    "conditions": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {"type": {"type": "string"}, "status": {"type": "string"}},
                        },
                    },
                },
            },
        },
    }
    columns = [
        {"name": "Spec", "type": "string", "jsonPath": ".spec.cronSpec"},
        {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
        {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
        {"name": "Image", "type": "string", "priority": 1, "jsonPath": ".spec.image"},
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"crontabs.{group}"},
        "spec": {
            "group": group,
            "scope": scope,
            "names": {"plural": "crontabs", "singular": "crontab", "kind": "CronTab", "shortNames": [short_name(group)], "categories": ["e2e"]},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.labelSelector",
                        },
                    },
                    "additionalPrinterColumns": columns,
                },
                {"name": "v1beta1", "served": True, "storage": False, "schema": {"openAPIV3Schema": schema}},
            ],
        },
    }


def short_name(group: str) -> str:
    return "ct" + group.split(".")[0].split("-")[-1]


def crontab(name: str, group: str, version: str = "v1", **spec) -> dict:
    body = {"cronSpec": "* * * * */5", "image": "my-cron-image", **spec}
    return {"apiVersion": f"{group}/{version}", "kind": "CronTab", "metadata": {"name": name}, "spec": body}


def unique_group() -> str:
    return f"e2e-{secrets.token_hex(3)}.example.com"


def established(tug, name: str) -> dict | None:
    resp = tug.request("GET", f"{CRD_PATH}/{name}")
    if resp.status != 200:
        return None
    crd = resp.json()
    conditions = {c["type"]: c for c in crd.get("status", {}).get("conditions", [])}
    if conditions.get("Established", {}).get("status") == "True":
        return crd
    return None


class Definition:
    """A CronTab definition in a group of its own, made for one test."""

    def __init__(self, tug, group: str, scope: str = "Namespaced"):
        self.tug = tug
        self.group = group
        self.name = f"crontabs.{group}"
        self.resource = f"crontabs.{group}"
        self.body = crontab_crd(group, scope)

    def create(self) -> dict:
        self.tug.create(CRD_PATH, self.body)
        return wait_for(lambda: established(self.tug, self.name), f"{self.name} to be established", timeout=15)

    def path(self, namespace: str | None, name: str = "", version: str = "v1") -> str:
        base = f"/apis/{self.group}/{version}"
        if namespace:
            base += f"/namespaces/{namespace}"
        base += "/crontabs"
        return f"{base}/{name}" if name else base

    def delete(self) -> None:
        self.tug.request("DELETE", f"{CRD_PATH}/{self.name}")


@pytest.fixture
def crd(tug):
    """An established CronTab definition of the test's own (deleted afterwards)."""
    definition = Definition(tug, unique_group())
    definition.create()
    yield definition
    definition.delete()


def manifest(*objects: dict) -> str:
    return yaml.safe_dump_all(objects)


# --- definitions ------------------------------------------------------------------


def test_crd_is_established_with_accepted_names_and_served(kubectl, tug):
    group = unique_group()
    definition = Definition(tug, group)
    try:
        kubectl("apply", "-f", "-", input=manifest(definition.body))
        waited = kubectl("wait", "--for", "condition=established", "--timeout=30s", f"crd/{definition.name}")
        assert "condition met" in waited.stdout

        status = tug.request("GET", f"{CRD_PATH}/{definition.name}").json()["status"]
        assert status["acceptedNames"] == {
            "plural": "crontabs",
            "singular": "crontab",
            "shortNames": [short_name(group)],
            "kind": "CronTab",
            "listKind": "CronTabList",
            "categories": ["e2e"],
        }
        conditions = {c["type"]: c for c in status["conditions"]}
        assert (conditions["NamesAccepted"]["status"], conditions["NamesAccepted"]["reason"]) == ("True", "NoConflicts")
        assert (conditions["Established"]["status"], conditions["Established"]["reason"]) == ("True", "InitialNamesAccepted")
        assert status["storedVersions"] == ["v1"]

        # Discovery: the group (v1 preferred), its resources and subresources, short names.
        group_doc = tug.request("GET", f"/apis/{group}").json()
        assert group_doc["preferredVersion"]["version"] == "v1"
        assert [v["version"] for v in group_doc["versions"]] == ["v1", "v1beta1"]
        resources = {r["name"]: r for r in tug.request("GET", f"/apis/{group}/v1").json()["resources"]}
        assert resources["crontabs"]["shortNames"] == [short_name(group)]
        assert resources["crontabs"]["categories"] == ["e2e"]
        assert resources["crontabs"]["singularName"] == "crontab"
        assert resources["crontabs/status"]["kind"] == "CronTab"
        assert (resources["crontabs/scale"]["group"], resources["crontabs/scale"]["kind"]) == ("autoscaling", "Scale")
        listed = kubectl("api-resources", f"--api-group={group}").stdout
        assert short_name(group) in listed and "CronTab" in listed
    finally:
        definition.delete()


def test_aggregated_discovery_and_openapi_list_custom_resources(tug, crd):
    resp = tug.request("GET", "/apis", headers={"Accept": "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"})
    groups = {g["metadata"]["name"]: g for g in resp.json()["items"]}
    v1 = groups[crd.group]["versions"][0]
    assert v1["version"] == "v1"
    entry = v1["resources"][0]
    assert (entry["resource"], entry["scope"], entry["singularResource"]) == ("crontabs", "Namespaced", "crontab")
    assert sorted(s["subresource"] for s in entry["subresources"]) == ["scale", "status"]

    index = tug.request("GET", "/openapi/v3").json()["paths"]
    url = index[f"apis/{crd.group}/v1"]["serverRelativeURL"]
    doc = tug.request("GET", url).json()
    schema = doc["components"]["schemas"][f"com.example.{crd.group.split('.')[0]}.v1.CronTab"]
    assert schema["x-kubernetes-group-version-kind"] == [{"group": crd.group, "kind": "CronTab", "version": "v1"}]
    assert schema["properties"]["spec"]["properties"]["replicas"]["default"] == 1
    patch = doc["paths"][f"/apis/{crd.group}/v1/namespaces/{{namespace}}/crontabs/{{name}}"]["patch"]
    assert "application/strategic-merge-patch+json" not in patch["requestBody"]["content"]
    assert any(p["name"] == "fieldValidation" for p in patch["parameters"])

    v2 = tug.request("GET", "/openapi/v2").json()
    assert f"com.example.{crd.group.split('.')[0]}.v1.CronTab" in v2["definitions"]


def test_kubectl_explain_describes_a_custom_resource(kubectl, crd):
    out = kubectl("explain", "crontabs.spec", f"--api-version={crd.group}/v1").stdout
    assert "KIND:" in out and "CronTab" in out
    assert "cronSpec" in out and "replicas" in out


def test_names_held_by_another_definition_are_not_accepted(tug):
    group = unique_group()
    first = Definition(tug, group)
    first.create()
    second = crontab_crd(group)
    second["metadata"]["name"] = f"crontabz.{group}"
    second["spec"]["names"] = {"plural": "crontabz", "kind": "CronTab"}
    try:
        tug.create(CRD_PATH, second)

        def conflict():
            status = tug.request("GET", f"{CRD_PATH}/crontabz.{group}").json().get("status", {})
            return {c["type"]: c for c in status.get("conditions", [])}.get("NamesAccepted")

        names = wait_for(conflict, "the conflicting definition's NamesAccepted condition", timeout=15)
        assert names["status"] == "False"
        assert names["reason"] == "ListKindConflict"
        assert names["message"] == '"CronTabList" is already in use'
        assert tug.request("GET", f"/apis/{group}/v1/crontabz").status == 404
    finally:
        tug.request("DELETE", f"{CRD_PATH}/crontabz.{group}")
        first.delete()


# --- custom resources through kubectl ---------------------------------------------------


def test_kubectl_applies_lists_patches_and_deletes_custom_resources(kubectl, tug, crd, namespace):
    created = kubectl("apply", "-n", namespace, "-f", "-", input=manifest(crontab("cron-a", crd.group)))
    assert created.stdout.strip() == f"crontab.{crd.group}/cron-a created"
    stored = tug.request("GET", crd.path(namespace, "cron-a")).json()
    assert stored["spec"]["replicas"] == 1, "the schema's default is applied"
    assert stored["metadata"]["generation"] == 1

    # The printer columns, with the priority-1 column only under -o wide; the short name.
    rows = parse_table(kubectl("get", crd.resource, "-n", namespace).stdout)
    assert rows == [{"NAME": "cron-a", "SPEC": "* * * * */5", "REPLICAS": "1", "READY": ""}]
    wide = parse_table(kubectl("get", short_name(crd.group), "-n", namespace, "-o", "wide").stdout)
    assert wide[0]["IMAGE"] == "my-cron-image"

    kubectl("patch", crd.resource, "cron-a", "-n", namespace, "--type", "merge", "-p", '{"spec": {"replicas": 3}}')
    kubectl(
        "patch", crd.resource, "cron-a", "-n", namespace, "--type", "json",
        "-p", '[{"op": "replace", "path": "/spec/image", "value": "other-image"}]',
    )  # fmt: skip
    got = json.loads(kubectl("get", crd.resource, "cron-a", "-n", namespace, "-o", "json").stdout)
    assert (got["spec"]["replicas"], got["spec"]["image"]) == (3, "other-image")
    assert got["metadata"]["generation"] == 3

    # Strategic merge patches are refused, as upstream refuses them for custom resources.
    strategic = kubectl("patch", crd.resource, "cron-a", "-n", namespace, "-p", '{"spec": {"replicas": 4}}', check=False)
    assert strategic.returncode != 0
    assert "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml" in strategic.stderr

    # Re-applying the manifest merges into the live object.
    applied = kubectl("apply", "-n", namespace, "-f", "-", input=manifest(crontab("cron-a", crd.group, image="third")))
    assert applied.stdout.strip() == f"crontab.{crd.group}/cron-a configured"

    deleted = kubectl("delete", crd.resource, "cron-a", "-n", namespace)
    assert f'"cron-a" deleted' in deleted.stdout
    assert tug.request("GET", crd.path(namespace, "cron-a")).status == 404


def test_invalid_custom_resource_is_rejected_with_the_schema_error(kubectl, tug, crd, namespace):
    bad = crontab("bad", crd.group, replicas="three")
    result = kubectl("apply", "-n", namespace, "-f", "-", input=manifest(bad), check=False)
    assert result.returncode != 0
    assert (
        'The CronTab "bad" is invalid: spec.replicas: Invalid value: "string": '
        'spec.replicas in body must be of type integer: "string"'
    ) in result.stderr

    resp = tug.request("POST", crd.path(namespace), crontab("bad", crd.group, replicas=11, mode="Medium", cronSpec="soon"))
    assert resp.status == 422
    status = resp.json()
    assert status["reason"] == "Invalid"
    assert status["details"]["group"] == crd.group
    assert status["details"]["kind"] == "CronTab"
    causes = {c["field"]: c for c in status["details"]["causes"]}
    assert causes["spec.replicas"]["message"] == "Invalid value: 11: spec.replicas in body should be less than or equal to 10"
    assert causes["spec.mode"]["reason"] == "FieldValueNotSupported"
    assert causes["spec.mode"]["message"] == 'Unsupported value: "Medium": supported values: "Fast", "Slow"'
    assert causes["spec.cronSpec"]["message"].startswith('Invalid value: "soon": spec.cronSpec in body should match')

    missing = crontab("bad", crd.group)
    del missing["spec"]["cronSpec"]
    resp = tug.request("POST", crd.path(namespace), missing)
    assert resp.status == 422
    assert resp.json()["details"]["causes"] == [{"reason": "FieldValueRequired", "message": "Required value", "field": "spec.cronSpec"}]


def test_unknown_fields_are_pruned_with_a_warning_and_refused_when_strict(kubectl, tug, crd, namespace):
    body = crontab("pruned", crd.group, bogus=1, extra={"kept": {"any": "thing"}})
    strict = kubectl("apply", "-n", namespace, "-f", "-", input=manifest(body), check=False)
    assert strict.returncode != 0, "kubectl validates strictly by default, on the server"
    assert 'strict decoding error: unknown field "spec.bogus"' in strict.stderr

    warned = kubectl("apply", "--validate=warn", "-n", namespace, "-f", "-", input=manifest(body))
    assert 'unknown field "spec.bogus"' in warned.stderr
    stored = tug.request("GET", crd.path(namespace, "pruned")).json()
    assert "bogus" not in stored["spec"]
    assert stored["spec"]["extra"] == {"kept": {"any": "thing"}}, "x-kubernetes-preserve-unknown-fields keeps it"

    resp = tug.request("POST", crd.path(namespace) + "?fieldValidation=Strict", crontab("strict", crd.group, bogus=1))
    assert resp.status == 400
    assert resp.json()["message"] == (
        'CronTab in version "v1" cannot be handled as a CronTab: strict decoding error: unknown field "spec.bogus"'
    )
    resp = tug.request("POST", crd.path(namespace), crontab("warned", crd.group, bogus=1))
    assert resp.status == 201
    assert resp.headers.get("warning") == '299 - "unknown field \\"spec.bogus\\""'


def test_kubectl_scale_changes_the_replicas_path(kubectl, tug, crd, namespace):
    tug.create(crd.path(namespace), crontab("scaled", crd.group, replicas=2))
    out = kubectl("scale", crd.resource, "scaled", "-n", namespace, "--replicas=5")
    assert out.stdout.strip() == f"crontab.{crd.group}/scaled scaled"
    assert tug.request("GET", crd.path(namespace, "scaled")).json()["spec"]["replicas"] == 5

    status = {"status": {"replicas": 4, "labelSelector": "app=cron"}}
    resp = tug.request("PATCH", crd.path(namespace, "scaled/status"), status, content_type="application/merge-patch+json")
    assert resp.status == 200, resp
    scale = tug.request("GET", crd.path(namespace, "scaled/scale")).json()
    assert (scale["kind"], scale["apiVersion"]) == ("Scale", "autoscaling/v1")
    assert scale["spec"] == {"replicas": 5}
    assert scale["status"] == {"replicas": 4, "selector": "app=cron"}


# --- subresources, versions and defaults through raw requests ---------------------------------


def test_status_subresource_separates_status_from_the_rest(tug, crd, namespace):
    body = crontab("st", crd.group)
    body["status"] = {"replicas": 9}
    created = tug.create(crd.path(namespace), body)
    assert "status" not in created, "status is written only through the status subresource"

    created["status"] = {"replicas": 1}
    created["spec"]["image"] = "changed"
    updated = tug.request("PUT", crd.path(namespace, "st"), created).json()
    assert "status" not in updated, "a write of the main resource keeps the status as it was"
    assert updated["metadata"]["generation"] == 2

    updated["status"] = {"replicas": 2, "conditions": [{"type": "Ready", "status": "True"}]}
    updated["spec"]["image"] = "ignored"
    resp = tug.request("PUT", crd.path(namespace, "st/status"), updated)
    assert resp.status == 200, resp
    after = resp.json()
    assert after["status"]["replicas"] == 2
    assert after["spec"]["image"] == "changed", "a status write changes only the status"
    assert after["metadata"]["generation"] == 2, "status changes do not bump the generation"

    table = tug.request("GET", crd.path(namespace), headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"}).json()
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Spec", "Replicas", "Ready", "Image"]
    assert table["rows"][0]["cells"] == ["st", "* * * * */5", 1, "True", "changed"]


def test_versions_convert_by_api_version_and_are_stored_in_the_storage_version(tug, crd, namespace):
    created = tug.create(crd.path(namespace, version="v1beta1"), crontab("beta", crd.group, version="v1beta1"))
    assert created["apiVersion"] == f"{crd.group}/v1beta1"
    as_v1 = tug.request("GET", crd.path(namespace, "beta")).json()
    assert as_v1["apiVersion"] == f"{crd.group}/v1"
    assert as_v1["spec"] == created["spec"]
    listed = tug.request("GET", crd.path(namespace, version="v1beta1")).json()
    assert listed["kind"] == "CronTabList"
    assert [i["apiVersion"] for i in listed["items"]] == [f"{crd.group}/v1beta1"]


def test_objects_sent_with_metadata_last_are_read_back_intact(tug, crd, namespace):
    body = {
        "spec": {"cronSpec": "* * * * */5", "extra": {"metadata": {"name": "nested"}}},
        "metadata": {"name": "ordered"},
        "kind": "CronTab",
        "apiVersion": f"{crd.group}/v1",
    }
    created = tug.create(crd.path(namespace), body)
    got = tug.request("GET", crd.path(namespace, "ordered")).json()
    assert list(got)[:3] == ["apiVersion", "kind", "metadata"]
    assert got["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    assert got["spec"]["extra"] == {"metadata": {"name": "nested"}}


def test_cluster_scoped_custom_resources(tug):
    definition = Definition(tug, unique_group(), scope="Cluster")
    definition.create()
    try:
        created = tug.create(definition.path(None), crontab("global", definition.group))
        assert "namespace" not in created["metadata"]
        assert tug.request("GET", definition.path(None, "global")).status == 200
        assert tug.request("GET", definition.path("default", "global")).status == 404
    finally:
        definition.delete()


# --- lifecycles --------------------------------------------------------------------------


def test_deleting_a_crd_deletes_its_resources_and_its_discovery_entry(kubectl, tug, make_namespace):
    definition = Definition(tug, unique_group())
    definition.create()
    ns = make_namespace("crd-delete")
    tug.create(definition.path(ns), crontab("doomed", definition.group))
    tug.create(definition.path("default"), crontab(f"doomed-{kubectl.version.replace('.', '')}", definition.group))

    deleted = kubectl("delete", "crd", definition.name)
    assert f'customresourcedefinition.apiextensions.k8s.io "{definition.name}" deleted' in deleted.stdout
    wait_for(lambda: tug.request("GET", f"{CRD_PATH}/{definition.name}").status == 404, "the definition to be gone")
    assert tug.request("GET", f"/apis/{definition.group}").status == 404
    assert tug.request("GET", definition.path(ns, "doomed")).status == 404
    groups = [g["name"] for g in tug.request("GET", "/apis").json()["groups"]]
    assert definition.group not in groups

    # Defined again, the resource starts empty: the old objects were deleted, not hidden.
    definition.create()
    try:
        assert tug.request("GET", definition.path(None)).json()["items"] == []
    finally:
        definition.delete()


def test_deleting_a_crd_waits_for_custom_resources_held_by_finalizers(tug):
    definition = Definition(tug, unique_group())
    definition.create()
    held = crontab("held", definition.group)
    held["metadata"]["finalizers"] = ["e2e.tugboat.dev/hold"]
    tug.create(definition.path("default"), held)
    tug.request("DELETE", f"{CRD_PATH}/{definition.name}")

    def terminating():
        crd = tug.request("GET", f"{CRD_PATH}/{definition.name}").json()
        conditions = {c["type"]: c for c in crd["status"].get("conditions", [])}
        return crd if conditions.get("Terminating", {}).get("reason") == "InstanceDeletionInProgress" else None

    crd = wait_for(terminating, "the definition to wait for its resources")
    assert crd["metadata"]["finalizers"] == ["customresourcecleanup.apiextensions.k8s.io"]
    refused = tug.request("POST", definition.path("default"), crontab("late", definition.group))
    assert refused.status == 405
    assert refused.json()["message"] == "create not allowed while custom resource definition is terminating"

    resp = tug.request(
        "PATCH", definition.path("default", "held"), {"metadata": {"finalizers": None}}, content_type="application/merge-patch+json"
    )
    assert resp.status == 200, resp
    wait_for(lambda: tug.request("GET", f"{CRD_PATH}/{definition.name}").status == 404, "the definition to be gone", timeout=30)


def test_namespace_deletion_deletes_its_custom_resources(tug, crd, make_namespace):
    ns = make_namespace("crd-ns")
    tug.create(crd.path(ns), crontab("in-ns", crd.group))
    resp = tug.request("DELETE", f"/api/v1/namespaces/{ns}")
    assert resp.status == 200, resp
    wait_for(lambda: tug.request("GET", f"/api/v1/namespaces/{ns}").status == 404, "the namespace to be gone", timeout=60)
    assert tug.request("GET", crd.path(ns, "in-ns")).status == 404


def owner_reference(owner: dict) -> dict:
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"]}


def test_garbage_collector_deletes_dependents_of_a_deleted_custom_resource(kubectl, tug, crd, namespace):
    owner = tug.create(crd.path(namespace), crontab("owner", crd.group))
    configmaps = f"/api/v1/namespaces/{namespace}/configmaps"
    tug.create(configmaps, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "dependent", "ownerReferences": [owner_reference(owner)]}})
    kubectl("delete", crd.resource, "owner", "-n", namespace)
    wait_for(lambda: tug.request("GET", f"{configmaps}/dependent").status == 404, "the dependent to be collected", timeout=45)


def test_garbage_collector_deletes_custom_resources_whose_owner_is_gone(tug, crd, namespace):
    configmaps = f"/api/v1/namespaces/{namespace}/configmaps"
    owner = tug.create(configmaps, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner"}})
    dependent = crontab("dependent", crd.group)
    dependent["metadata"]["ownerReferences"] = [owner_reference(owner)]
    tug.create(crd.path(namespace), dependent)
    assert tug.request("DELETE", f"{configmaps}/owner").status == 200
    # The collector reads discovery again when a definition changes, so it watches the new resource.
    wait_for(lambda: tug.request("GET", crd.path(namespace, "dependent")).status == 404, "the custom resource to be collected", timeout=50)


@pytest.mark.skipif(E2E_DATASTORE == "memory", reason="the memory datastore keeps nothing across a restart")
def test_custom_resources_are_served_again_after_a_restart(fresh_server):
    definition = Definition(fresh_server, unique_group())
    definition.create()
    fresh_server.create(definition.path("default"), crontab("survivor", definition.group))
    fresh_server.restart()
    # The stored definitions are served before the server reports ready.
    resp = fresh_server.request("GET", definition.path("default", "survivor"))
    assert resp.status == 200, resp
    assert resp.json()["spec"]["cronSpec"] == "* * * * */5"


# --- the Python client -------------------------------------------------------------------


def test_python_client_custom_objects_crud_and_watch(kube_client, crd, namespace):
    api = client.CustomObjectsApi(kube_client)
    args = (crd.group, "v1", namespace, "crontabs")

    created = api.create_namespaced_custom_object(*args, crontab("py", crd.group))
    assert created["spec"]["replicas"] == 1
    got = api.get_namespaced_custom_object(*args, "py")
    assert got["metadata"]["uid"] == created["metadata"]["uid"]
    listed = api.list_namespaced_custom_object(*args)
    assert [i["metadata"]["name"] for i in listed["items"]] == ["py"]

    patched = api.patch_namespaced_custom_object(*args, "py", {"spec": {"replicas": 2}})
    assert patched["spec"]["replicas"] == 2
    got["spec"]["image"] = "replaced"
    got["metadata"].pop("resourceVersion")
    replaced = api.replace_namespaced_custom_object(*args, "py", got)
    assert (replaced["spec"]["image"], replaced["spec"]["replicas"]) == ("replaced", 1)
    status = api.patch_namespaced_custom_object_status(*args, "py", {"status": {"replicas": 1}})
    assert status["status"] == {"replicas": 1}

    with pytest.raises(ApiException) as invalid:
        api.create_namespaced_custom_object(*args, crontab("py-bad", crd.group, replicas=-1))
    assert invalid.value.status == 422

    w = watch.Watch()
    events = []
    stream = w.stream(api.list_namespaced_custom_object, *args, resource_version=listed["metadata"]["resourceVersion"], timeout_seconds=10)
    api.delete_namespaced_custom_object(*args, "py")
    for event in stream:
        events.append((event["type"], event["object"]["metadata"]["name"]))
        if event["type"] == "DELETED":
            w.stop()
    assert events[-1] == ("DELETED", "py")
    assert ("MODIFIED", "py") in events
    with pytest.raises(ApiException) as gone:
        api.get_namespaced_custom_object(*args, "py")
    assert gone.value.status == 404
