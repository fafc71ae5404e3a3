"""Service accounts: the `default` account and the `kube-root-ca.crt` ConfigMap in every
namespace, ServiceAccount admission of pods (default account, projected token volume),
TokenRequest (`kubectl create token`) and authentication with the tokens it returns, and
service account issuer discovery."""

import base64
import json
import subprocess
import time
from pathlib import Path

import pytest

from support import request, unique_name, wait_for

ISSUER = "https://kubernetes.default.svc.cluster.local"
MOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
DESCRIPTION = (
    "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the "
    "internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes "
    "clusters."
)


def get(tug, path):
    resp = tug.request("GET", path)
    return resp.json() if resp.status == 200 else None


def wait_for_default_account(tug, ns) -> dict:
    return wait_for(lambda: get(tug, f"/api/v1/namespaces/{ns}/serviceaccounts/default"), f"default account in {ns}")


def as_bearer(tug, token: str, path: str):
    """A request with only `token` as credentials (no client certificate)."""
    return request(tug.url, tug.creds, "GET", path, headers={"Authorization": f"Bearer {token}"}, credentials=False)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def claims_of(token: str) -> dict:
    return json.loads(unb64url(token.split(".")[1]))


def sign_es256(key_file: Path, header: dict, claims: dict) -> str:
    """A JWT signed with an EC P-256 key by openssl, to make tokens the server did not issue."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    der = subprocess.run(
        ["openssl", "dgst", "-sha256", "-sign", str(key_file)],
        input=signing_input.encode(), capture_output=True, check=True,
    ).stdout  # fmt: skip
    # ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }, to JWS's fixed-width r || s.
    assert der[0] == 0x30
    pos = 2 if der[1] < 0x80 else 3
    parts = []
    for _ in range(2):
        assert der[pos] == 0x02
        length = der[pos + 1]
        parts.append(int.from_bytes(der[pos + 2 : pos + 2 + length], "big").to_bytes(32, "big"))
        pos += 2 + length
    return f"{signing_input}.{b64url(b''.join(parts))}"


def token_request(tug, ns, account, spec=None):
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec or {}}
    return tug.request("POST", f"/api/v1/namespaces/{ns}/serviceaccounts/{account}/token", body)


def pod(name, **spec):
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "app", "image": "busybox"}], **spec},
    }


# --- controllers -----------------------------------------------------------------------------


def test_new_namespace_gets_default_account_and_root_ca_config_map(tug, namespace):
    account = wait_for_default_account(tug, namespace)
    assert account["metadata"]["name"] == "default"
    cm = wait_for(
        lambda: get(tug, f"/api/v1/namespaces/{namespace}/configmaps/kube-root-ca.crt"), "kube-root-ca.crt"
    )
    assert cm["data"] == {"ca.crt": Path(tug.creds.ca_file).read_text()}
    assert cm["metadata"]["annotations"]["kubernetes.io/description"] == DESCRIPTION


def test_deleted_default_account_and_root_ca_config_map_come_back(tug, namespace):
    sa_path = f"/api/v1/namespaces/{namespace}/serviceaccounts/default"
    cm_path = f"/api/v1/namespaces/{namespace}/configmaps/kube-root-ca.crt"
    old_sa = wait_for_default_account(tug, namespace)
    old_cm = wait_for(lambda: get(tug, cm_path), "kube-root-ca.crt")
    assert tug.request("DELETE", sa_path).status == 200
    assert tug.request("DELETE", cm_path).status == 200
    new_sa = wait_for(
        lambda: (s := get(tug, sa_path)) and s["metadata"]["uid"] != old_sa["metadata"]["uid"] and s,
        "default account recreated",
    )
    assert new_sa["metadata"]["name"] == "default"
    new_cm = wait_for(
        lambda: (c := get(tug, cm_path)) and c["metadata"]["uid"] != old_cm["metadata"]["uid"] and c,
        "kube-root-ca.crt recreated",
    )
    assert new_cm["data"] == old_cm["data"]


def test_edited_root_ca_config_map_is_restored(tug, namespace):
    cm_path = f"/api/v1/namespaces/{namespace}/configmaps/kube-root-ca.crt"
    original = wait_for(lambda: get(tug, cm_path), "kube-root-ca.crt")
    resp = tug.request(
        "PATCH", cm_path, {"data": {"ca.crt": "tampered", "extra": "x"}}, content_type="application/merge-patch+json"
    )
    assert resp.status == 200, resp
    restored = wait_for(
        lambda: (c := get(tug, cm_path)) and c["data"] == original["data"] and c, "kube-root-ca.crt restored"
    )
    assert restored["metadata"]["annotations"]["kubernetes.io/description"] == DESCRIPTION


# --- admission -------------------------------------------------------------------------------


def test_pod_runs_as_default_account_with_the_api_access_volume(tug, namespace):
    wait_for_default_account(tug, namespace)
    body = pod("web", initContainers=[{"name": "init", "image": "busybox"}])
    created = tug.create(f"/api/v1/namespaces/{namespace}/pods", body)
    spec = created["spec"]
    assert spec["serviceAccountName"] == "default"
    assert spec["serviceAccount"] == "default"
    volumes = [v for v in spec["volumes"] if v["name"].startswith("kube-api-access-")]
    assert len(volumes) == 1
    volume = volumes[0]
    assert len(volume["name"]) == len("kube-api-access-") + 5
    namespace_field = {"apiVersion": "v1", "fieldPath": "metadata.namespace"}
    assert volume["projected"] == {
        "defaultMode": 420,
        "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": namespace_field}]}},
        ],
    }
    mount = {"name": volume["name"], "readOnly": True, "mountPath": MOUNT_PATH}
    assert spec["containers"][0]["volumeMounts"] == [mount]
    assert spec["initContainers"][0]["volumeMounts"] == [mount]
    stored = get(tug, f"/api/v1/namespaces/{namespace}/pods/web")
    assert stored["spec"]["volumes"] == spec["volumes"]


def test_pod_that_opts_out_of_automount_gets_no_token(tug, namespace):
    wait_for_default_account(tug, namespace)
    created = tug.create(f"/api/v1/namespaces/{namespace}/pods", pod("quiet", automountServiceAccountToken=False))
    assert created["spec"]["serviceAccountName"] == "default"
    assert "volumes" not in created["spec"]
    assert "volumeMounts" not in created["spec"]["containers"][0]


def test_pod_naming_a_missing_account_is_forbidden(tug, namespace):
    resp = tug.request("POST", f"/api/v1/namespaces/{namespace}/pods", pod("lost", serviceAccountName="ghost"))
    assert resp.status == 403, resp
    status = resp.json()
    assert status["reason"] == "Forbidden"
    assert status["message"] == (
        f'pods "lost" is forbidden: error looking up service account {namespace}/ghost: '
        'serviceaccount "ghost" not found'
    )


def test_pod_created_right_after_its_namespace_is_admitted(tug):
    """The `default` account appears asynchronously; admission waits for it a little as upstream."""
    ns = unique_name("e2e-sa-race")
    tug.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    try:
        created = tug.create(f"/api/v1/namespaces/{ns}/pods", pod("early"))
        assert created["spec"]["serviceAccountName"] == "default"
    finally:
        tug.request("DELETE", f"/api/v1/namespaces/{ns}")


# --- tokens ----------------------------------------------------------------------------------


def test_kubectl_create_token_returns_a_token_that_authenticates(kubectl, tug, namespace):
    account = wait_for_default_account(tug, namespace)
    token = kubectl("create", "token", "default", "-n", namespace).stdout.strip()
    claims = claims_of(token)
    assert claims["iss"] == ISSUER
    assert claims["sub"] == f"system:serviceaccount:{namespace}:default"
    assert claims["aud"] == [ISSUER]
    assert claims["exp"] - claims["iat"] == 3600
    assert claims["kubernetes.io"]["namespace"] == namespace
    assert claims["kubernetes.io"]["serviceaccount"] == {"name": "default", "uid": account["metadata"]["uid"]}
    resp = as_bearer(tug, token, f"/api/v1/namespaces/{namespace}")
    assert resp.status == 200, resp
    assert resp.json()["metadata"]["name"] == namespace


def test_token_for_another_audience_is_rejected(kubectl, tug, namespace):
    wait_for_default_account(tug, namespace)
    token = kubectl("create", "token", "default", "-n", namespace, "--audience", "vault").stdout.strip()
    assert claims_of(token)["aud"] == ["vault"]
    resp = as_bearer(tug, token, f"/api/v1/namespaces/{namespace}")
    assert resp.status == 401, resp
    assert resp.json()["reason"] == "Unauthorized"


def test_token_stops_working_when_its_account_is_deleted_or_recreated(tug, namespace):
    accounts = f"/api/v1/namespaces/{namespace}/serviceaccounts"
    tug.create(accounts, {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "builder"}})
    resp = token_request(tug, namespace, "builder")
    assert resp.status == 201, resp
    token = resp.json()["status"]["token"]
    assert as_bearer(tug, token, f"/api/v1/namespaces/{namespace}").status == 200
    assert tug.request("DELETE", f"{accounts}/builder").status == 200
    assert as_bearer(tug, token, f"/api/v1/namespaces/{namespace}").status == 401
    tug.create(accounts, {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "builder"}})
    assert as_bearer(tug, token, f"/api/v1/namespaces/{namespace}").status == 401


def test_pod_bound_token_stops_working_when_the_pod_is_deleted(kubectl, tug, namespace):
    wait_for_default_account(tug, namespace)
    created = tug.create(f"/api/v1/namespaces/{namespace}/pods", pod("holder"))
    token = kubectl(
        "create", "token", "default", "-n", namespace, "--bound-object-kind", "Pod", "--bound-object-name", "holder"
    ).stdout.strip()
    assert claims_of(token)["kubernetes.io"]["pod"] == {"name": "holder", "uid": created["metadata"]["uid"]}
    assert as_bearer(tug, token, f"/api/v1/namespaces/{namespace}").status == 200
    resp = tug.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/holder?gracePeriodSeconds=0")
    assert resp.status == 200, resp
    wait_for(lambda: tug.request("GET", f"/api/v1/namespaces/{namespace}/pods/holder").status == 404, "pod gone")
    assert as_bearer(tug, token, f"/api/v1/namespaces/{namespace}").status == 401


def test_expired_and_forged_tokens_are_rejected(tug, namespace, tmp_path):
    wait_for_default_account(tug, namespace)
    resp = token_request(tug, namespace, "default")
    assert resp.status == 201, resp
    token = resp.json()["status"]["token"]
    header = json.loads(unb64url(token.split(".")[0]))
    claims = claims_of(token)
    path = f"/api/v1/namespaces/{namespace}"
    key = Path(tug.data_dir) / "tls" / "service-account.key"

    # Re-signed with the cluster's key, the same claims pass: the rejections below are about
    # the time and the key, not about how the tokens were made.
    assert as_bearer(tug, sign_es256(key, header, claims), path).status == 200
    now = int(time.time())
    expired = dict(claims, iat=now - 7200, nbf=now - 7200, exp=now - 3600)
    resp = as_bearer(tug, sign_es256(key, header, expired), path)
    assert resp.status == 401, resp
    assert resp.json()["reason"] == "Unauthorized"

    other_key = tmp_path / "other.key"
    subprocess.run(
        ["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(other_key)], check=True
    )
    assert as_bearer(tug, sign_es256(other_key, header, claims), path).status == 401
    altered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert as_bearer(tug, altered, path).status == 401


def test_token_request_checks_its_input(tug, namespace):
    wait_for_default_account(tug, namespace)
    resp = token_request(tug, namespace, "default", {"expirationSeconds": 10})
    assert resp.status == 422, resp
    assert resp.json()["message"] == (
        'TokenRequest.authentication.k8s.io "" is invalid: spec.expirationSeconds: Invalid value: 10: '
        "may not specify a duration less than 10 minutes"
    )
    resp = token_request(tug, namespace, "nobody")
    assert resp.status == 404, resp
    assert resp.json()["message"] == 'serviceaccounts "nobody" not found'
    resp = token_request(tug, namespace, "default", {"audiences": ["a", "b"], "expirationSeconds": 7200})
    assert resp.status == 201, resp
    out = resp.json()
    assert out["kind"] == "TokenRequest"
    assert out["spec"]["audiences"] == ["a", "b"]
    claims = claims_of(out["status"]["token"])
    assert claims["aud"] == ["a", "b"]
    assert claims["exp"] - claims["iat"] == 7200


def test_issuer_discovery_publishes_the_signing_key(tug, namespace):
    config = get(tug, "/.well-known/openid-configuration")
    assert config["issuer"] == ISSUER
    assert config["jwks_uri"] == f"{ISSUER}/openid/v1/jwks"
    jwks = get(tug, "/openid/v1/jwks")
    wait_for_default_account(tug, namespace)
    token = token_request(tug, namespace, "default").json()["status"]["token"]
    kid = json.loads(unb64url(token.split(".")[0]))["kid"]
    assert [k["kid"] for k in jwks["keys"]] == [kid]
    assert jwks["keys"][0]["kty"] == "EC"


def test_python_client_requests_a_token(kube_client, tug, namespace):
    from kubernetes import client

    wait_for_default_account(tug, namespace)
    body = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=900))
    out = client.CoreV1Api(kube_client).create_namespaced_service_account_token("default", namespace, body)
    claims = claims_of(out.status.token)
    assert claims["exp"] - claims["iat"] == 900
    assert abs(out.status.expiration_timestamp.timestamp() - claims["exp"]) <= 1
    assert as_bearer(tug, out.status.token, f"/api/v1/namespaces/{namespace}").status == 200


def test_tokens_name_the_node_and_node_bound_tokens_end_with_the_node(fresh_server):
    server = fresh_server
    node = server.create("/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "worker-1"}})
    wait_for_default_account(server, "default")
    created = server.create("/api/v1/namespaces/default/pods", pod("on-node", nodeName="worker-1"))
    bound_to_pod = {"boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "on-node"}}
    resp = token_request(server, "default", "default", bound_to_pod)
    assert resp.status == 201, resp
    k8s = claims_of(resp.json()["status"]["token"])["kubernetes.io"]
    assert k8s["pod"] == {"name": "on-node", "uid": created["metadata"]["uid"]}
    assert k8s["node"] == {"name": "worker-1", "uid": node["metadata"]["uid"]}

    wrong_uid = {"boundObjectRef": {"apiVersion": "v1", "kind": "Node", "name": "worker-1", "uid": "nope"}}
    assert token_request(server, "default", "default", wrong_uid).status == 409
    bound_to_node = {"boundObjectRef": {"apiVersion": "v1", "kind": "Node", "name": "worker-1"}}
    resp = token_request(server, "default", "default", bound_to_node)
    assert resp.status == 201, resp
    token = resp.json()["status"]["token"]
    assert as_bearer(server, token, "/api/v1/namespaces/default").status == 200
    assert server.request("DELETE", "/api/v1/nodes/worker-1").status == 200
    assert as_bearer(server, token, "/api/v1/namespaces/default").status == 401
