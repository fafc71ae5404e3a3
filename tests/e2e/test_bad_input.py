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
