"""Requests the server must refuse, with upstream's status codes and Status bodies."""

import pytest

from support import request

MALFORMED = b'{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "bad"'


def assert_status(resp, code: int, reason: str) -> dict:
    """`resp` is a failure Status with this code and reason; returns the Status."""
    assert resp.status == code, resp
    assert resp.headers.get("content-type", "").startswith("application/json"), resp
    status = resp.json()
    assert status["kind"] == "Status", status
    assert status["apiVersion"] == "v1", status
    assert status["status"] == "Failure", status
    assert status["code"] == code, status
    assert status["reason"] == reason, status
    return status


@pytest.mark.parametrize(
    "path",
    ["/api/v1/namespaces/default/configmaps", "/apis/apps/v1/deployments", "/api/v1/nodes"],
)
def test_request_without_credentials_is_401(tug, path):
    # Like k3s (and unlike a stock kube-apiserver), anonymous requests are not
    # authenticated at all, so they get 401 rather than a 403 for system:anonymous.
    anonymous = request(tug.url, tug.creds, "GET", path, credentials=False)
    status = assert_status(anonymous, 401, "Unauthorized")
    assert status["message"] == "Unauthorized", status

    bad_token = request(
        tug.url,
        tug.creds,
        "GET",
        path,
        credentials=False,
        headers={"Authorization": "Bearer not-a-real-token"},
    )
    assert_status(bad_token, 401, "Unauthorized")


def test_malformed_json_is_400_and_changes_nothing(tug, namespace):
    collection = f"/api/v1/namespaces/{namespace}/configmaps"
    good = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "good", "labels": {"e2e": "bad-input"}},
        "data": {"k": "v"},
    }
    created = tug.request("POST", collection, good)
    assert created.status == 201, created
    before = tug.request("GET", f"{collection}/good").json()

    # Truncated JSON, on create and on update.
    assert_status(tug.request("POST", collection, MALFORMED), 400, "BadRequest")
    assert_status(tug.request("PUT", f"{collection}/good", MALFORMED), 400, "BadRequest")
    # Valid JSON that is not an object.
    assert_status(tug.request("POST", collection, b"[1, 2, 3]"), 400, "BadRequest")

    after = tug.request("GET", f"{collection}/good").json()
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert after["data"] == {"k": "v"}
    assert_status(tug.request("GET", f"{collection}/bad"), 404, "NotFound")

    listed = tug.request("GET", f"{collection}?labelSelector=e2e%3Dbad-input").json()
    assert [item["metadata"]["name"] for item in listed["items"]] == ["good"]


# --- more bad input; after each refusal nothing is stored and the server still serves ---

RFC1123_SUBDOMAIN = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
    "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
    "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)


def configmap_body(name: str, **extra) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {"e2e": "bad-input"}},
        "data": {"k": "v"},
        **extra,
    }


class Store:
    """A namespace with one probe ConfigMap; `unchanged()` checks that a refused
    request stored nothing, changed nothing, and left the server serving."""

    def __init__(self, tug, namespace: str):
        self.tug = tug
        self.namespace = namespace
        self.collection = f"/api/v1/namespaces/{namespace}/configmaps"
        self.probe = tug.create(self.collection, configmap_body("probe"))
        self.before = self._state()

    def _state(self):
        listed = self.tug.request("GET", self.collection)
        assert listed.status == 200, listed
        # Leaves out the CA bundle a controller may publish into every namespace.
        names = sorted(item["metadata"]["name"] for item in listed.json()["items"])
        names = [name for name in names if name != "kube-root-ca.crt"]
        probe = self.tug.request("GET", f"{self.collection}/probe")
        assert probe.status == 200, probe
        return names, probe.json()["metadata"]["resourceVersion"], probe.json()["data"]

    def unchanged(self) -> None:
        assert self._state() == self.before
        ready = self.tug.request("GET", "/readyz")
        assert ready.status == 200, ready
        # And it still accepts good requests.
        created = self.tug.request("POST", self.collection, configmap_body("good-after"))
        assert created.status == 201, created
        assert self.tug.request("DELETE", f"{self.collection}/good-after").status == 200


@pytest.fixture
def store(tug, namespace) -> Store:
    return Store(tug, namespace)


def test_malformed_yaml_is_400_and_changes_nothing(tug, store):
    yaml_headers = {"content_type": "application/yaml"}
    # Sanity: YAML bodies are accepted.
    good = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-yaml\ndata:\n  k: v\n"
    created = tug.request("POST", store.collection, good, **yaml_headers)
    assert created.status == 201, created
    assert created.json()["data"] == {"k": "v"}
    tug.request("DELETE", f"{store.collection}/from-yaml")

    unclosed = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [unclosed\n"
    assert_status(tug.request("POST", store.collection, unclosed, **yaml_headers), 400, "BadRequest")
    bad_indent = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n bad: indent\n"
    assert_status(tug.request("POST", store.collection, bad_indent, **yaml_headers), 400, "BadRequest")
    tabbed = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n\tname: x\n"
    assert_status(tug.request("POST", store.collection, tabbed, **yaml_headers), 400, "BadRequest")
    not_an_object = "- 1\n- 2\n"
    assert_status(tug.request("POST", store.collection, not_an_object, **yaml_headers), 400, "BadRequest")
    assert_status(tug.request("PUT", f"{store.collection}/probe", unclosed, **yaml_headers), 400, "BadRequest")
    store.unchanged()


def test_unknown_kind_in_a_manifest_is_refused_by_kubectl(kubectl, store):
    unknown_group = "apiVersion: example.com/v1\nkind: Frobnicator\nmetadata:\n  name: frob\n"
    result = kubectl("create", "-f", "-", "-n", store.namespace, input=unknown_group, check=False)
    assert result.returncode == 1
    assert 'no matches for kind "Frobnicator" in version "example.com/v1"' in result.stderr, result.stderr

    wrong_group = "apiVersion: apps/v1\nkind: ConfigMap\nmetadata:\n  name: misplaced\n"
    result = kubectl("create", "-f", "-", "-n", store.namespace, input=wrong_group, check=False)
    assert result.returncode == 1
    assert 'no matches for kind "ConfigMap" in version "apps/v1"' in result.stderr, result.stderr
    store.unchanged()


def test_body_api_version_must_match_the_url(tug, store):
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "misplaced"},
        "spec": {
            "selector": {"matchLabels": {"app": "x"}},
            "template": {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}},
        },
    }
    status = assert_status(tug.request("POST", store.collection, deployment), 400, "BadRequest")
    assert status["message"] == "the API version in the data (apps/v1) does not match the expected API version (v1)"

    deployments = f"/apis/apps/v1/namespaces/{store.namespace}/deployments"
    status = assert_status(tug.request("POST", deployments, configmap_body("misplaced")), 400, "BadRequest")
    assert status["message"] == "the API version in the data (v1) does not match the expected API version (apps/v1)"
    assert tug.request("GET", f"{deployments}/misplaced").status == 404

    # A kind the body's group does not have.
    wrong = configmap_body("misplaced")
    wrong["apiVersion"] = "apps/v1"
    assert_status(tug.request("POST", store.collection, wrong), 400, "BadRequest")
    # Replacing the probe with a body of another group.
    deployment["metadata"]["name"] = "probe"
    assert_status(tug.request("PUT", f"{store.collection}/probe", deployment), 400, "BadRequest")
    store.unchanged()


def test_body_over_3_mib_is_413(tug, store):
    huge = configmap_body("huge")
    # Just over the limit: upstream reads up to the limit, answers, and drains a
    # little more of the body, so that the client gets to read the answer.
    huge["data"] = {"blob": "x" * (3 * 1024 * 1024 + 16 * 1024)}
    status = assert_status(tug.request("POST", store.collection, huge, timeout=60), 413, "RequestEntityTooLarge")
    assert status["message"] == "Request entity too large: limit is 3145728"

    huge["metadata"]["name"] = "probe"
    assert_status(tug.request("PUT", f"{store.collection}/probe", huge, timeout=60), 413, "RequestEntityTooLarge")
    store.unchanged()


def test_name_too_long_is_422_on_metadata_name(tug, store):
    long_name = "a" * 254
    status = assert_status(tug.request("POST", store.collection, configmap_body(long_name)), 422, "Invalid")
    assert status["message"].startswith(f'ConfigMap "{long_name}" is invalid: metadata.name: '), status["message"]
    assert "must be no more than 253 characters" in status["message"]
    assert status["details"]["name"] == long_name
    assert status["details"]["kind"] == "ConfigMap"
    causes = status["details"]["causes"]
    assert [cause["field"] for cause in causes] == ["metadata.name"], causes
    assert "must be no more than 253 characters" in causes[0]["message"]

    # 253 characters is fine.
    longest = "b" * 253
    assert tug.request("POST", store.collection, configmap_body(longest)).status == 201
    assert tug.request("DELETE", f"{store.collection}/{longest}").status == 200

    # Namespace names are DNS labels: at most 63 characters.
    long_label = "n" * 64
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": long_label}}
    status = assert_status(tug.request("POST", "/api/v1/namespaces", namespace), 422, "Invalid")
    assert "must be no more than 63 characters" in status["message"], status
    # The server also labels every namespace kubernetes.io/metadata.name=<name>, a
    # label value that is too long as well; upstream reports both.
    assert "metadata.name" in [cause["field"] for cause in status["details"]["causes"]], status
    assert tug.request("GET", f"/api/v1/namespaces/{long_label}").status == 404
    store.unchanged()


@pytest.mark.parametrize("name", ["Bad_Name", "UPPER", "-leading-dash", "trailing.", "spaces in name"])
def test_invalid_name_characters_are_422(tug, store, name):
    status = assert_status(tug.request("POST", store.collection, configmap_body(name)), 422, "Invalid")
    assert status["message"] == (
        f'ConfigMap "{name}" is invalid: metadata.name: Invalid value: "{name}": {RFC1123_SUBDOMAIN}'
    )
    assert status["details"]["causes"] == [
        {"reason": "FieldValueInvalid", "message": f'Invalid value: "{name}": {RFC1123_SUBDOMAIN}', "field": "metadata.name"}
    ]
    store.unchanged()


def test_watch_with_non_numeric_resource_version_is_400(tug, store):
    for version in ("abc", "-1", "1.5"):
        resp = tug.request("GET", f"{store.collection}?watch=true&resourceVersion={version}", timeout=10)
        # Upstream (v1.36) still answers 500 here (kubernetes#139485, fix in
        # kubernetes#139525); a malformed client value is a 400.
        assert_status(resp, 400, "BadRequest")
    store.unchanged()


def test_unsupported_field_selector_is_400(tug, store):
    pods = f"/api/v1/namespaces/{store.namespace}/pods"
    status = assert_status(tug.request("GET", f"{pods}?fieldSelector=spec.bogus%3D1"), 400, "BadRequest")
    assert status["message"] == "field label not supported: spec.bogus"
    status = assert_status(tug.request("GET", f"{pods}?watch=true&fieldSelector=spec.bogus%3D1"), 400, "BadRequest")
    assert status["message"] == "field label not supported: spec.bogus"

    # Kinds without field labels of their own know only metadata.name and metadata.namespace.
    status = assert_status(
        tug.request("GET", f"{store.collection}?fieldSelector=data.k%3Dv"), 400, "BadRequest"
    )
    assert status["message"] == '"data.k" is not a known field selector: only "metadata.name", "metadata.namespace"'

    # A term without an operator does not parse.
    assert_status(tug.request("GET", f"{store.collection}?fieldSelector=metadata.name"), 400, "BadRequest")
    store.unchanged()


@pytest.mark.parametrize("selector", ["env%20in%20(prod", "%3Dvalue", "a%3D%3Db%3D%3Dc", "env%20notin%20prod", "!"])
def test_invalid_label_selector_is_400(tug, store, selector):
    assert_status(tug.request("GET", f"{store.collection}?labelSelector={selector}"), 400, "BadRequest")
    assert_status(tug.request("GET", f"{store.collection}?watch=true&labelSelector={selector}"), 400, "BadRequest")
    store.unchanged()


def test_unknown_fields_with_strict_validation_are_400(tug, store):
    body = configmap_body("strict", bogus=1)
    status = assert_status(
        tug.request("POST", f"{store.collection}?fieldValidation=Strict", body), 400, "BadRequest"
    )
    assert status["message"] == (
        'ConfigMap in version "v1" cannot be handled as a ConfigMap: strict decoding error: unknown field "bogus"'
    )
    assert tug.request("GET", f"{store.collection}/strict").status == 404

    nested = configmap_body("probe")
    nested["metadata"]["bogus"] = "x"
    status = assert_status(
        tug.request("PUT", f"{store.collection}/probe?fieldValidation=Strict", nested), 400, "BadRequest"
    )
    assert 'strict decoding error: unknown field "metadata.bogus"' in status["message"], status
    store.unchanged()


def test_unknown_fields_by_default_are_dropped_with_a_warning(tug, store):
    created = tug.request("POST", store.collection, configmap_body("warned", bogus=1))
    assert created.status == 201, created
    assert created.headers.get("warning") == '299 - "unknown field \\"bogus\\""', created.headers
    assert "bogus" not in created.json()
    assert "bogus" not in tug.request("GET", f"{store.collection}/warned").json()

    ignored = tug.request("POST", f"{store.collection}?fieldValidation=Ignore", configmap_body("ignored", bogus=1))
    assert ignored.status == 201, ignored
    assert "warning" not in ignored.headers, ignored.headers
    for name in ("warned", "ignored"):
        assert tug.request("DELETE", f"{store.collection}/{name}").status == 200
    store.unchanged()


def test_kubectl_create_with_an_unknown_field_is_refused(kubectl, store):
    manifest = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: strict\nbogus: 1\ndata:\n  k: v\n"
    result = kubectl("create", "-f", "-", "-n", store.namespace, input=manifest, check=False)
    assert result.returncode == 1
    assert 'strict decoding error: unknown field "bogus"' in result.stderr, result.stderr
    store.unchanged()


def test_health_check_node_port_outside_a_local_load_balancer_is_422(tug, namespace):
    body = {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "hc"},
        "spec": {"type": "NodePort", "healthCheckNodePort": 31999, "ports": [{"port": 80}]},
    }  # fmt: skip
    status = assert_status(tug.request("POST", f"/api/v1/namespaces/{namespace}/services", body), 422, "Invalid")
    cause = status["details"]["causes"][0]
    assert cause["field"] == "spec.healthCheckNodePort"
    assert "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'" in cause["message"]
    assert tug.request("GET", f"/api/v1/namespaces/{namespace}/services/hc").status == 404
    # Allocated when the service is a Local load balancer, and kept across an update without it.
    body["spec"] = {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "ports": [{"port": 80}]}
    created = tug.request("POST", f"/api/v1/namespaces/{namespace}/services", body).json()
    port = created["spec"]["healthCheckNodePort"]
    assert 30000 <= port <= 32767
    created["spec"].pop("healthCheckNodePort")
    updated = tug.request("PUT", f"/api/v1/namespaces/{namespace}/services/hc", created).json()
    assert updated["spec"]["healthCheckNodePort"] == port
