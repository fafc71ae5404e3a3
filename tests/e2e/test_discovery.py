"""Health, version and API discovery, as kubectl and plain HTTP clients see them."""

import json

from support import parse_table


def test_readyz_and_version(tug):
    ready = tug.request("GET", "/readyz")
    assert ready.status == 200, ready
    assert ready.body == b"ok", ready

    version = tug.request("GET", "/version")
    assert version.status == 200, version
    info = version.json()
    assert info["gitVersion"].startswith("v1.36"), info
    assert info["major"] == "1", info
    assert info["minor"].startswith("36"), info
    for key in ("gitCommit", "buildDate", "goVersion", "compiler", "platform"):
        assert key in info, f"/version lacks {key}: {info}"


def test_kubectl_version_shows_server_v1_36(kubectl):
    result = kubectl("version", "-o", "json")
    info = json.loads(result.stdout)
    assert info["serverVersion"]["gitVersion"].startswith("v1.36"), info
    assert info["clientVersion"]["gitVersion"].startswith(f"v{kubectl.version}."), info


def test_api_resources_lists_core_and_apps(kubectl):
    # kubectl exits non-zero when any group's discovery fails, so check=True
    # also proves that every advertised group answers.
    rows = parse_table(kubectl("api-resources").stdout)
    by_name = {(row["NAME"], row["APIVERSION"]): row for row in rows}

    expected = [
        # NAME, APIVERSION, SHORTNAMES, NAMESPACED, KIND
        ("configmaps", "v1", "cm", "true", "ConfigMap"),
        ("namespaces", "v1", "ns", "false", "Namespace"),
        ("pods", "v1", "po", "true", "Pod"),
        ("services", "v1", "svc", "true", "Service"),
        ("secrets", "v1", "", "true", "Secret"),
        ("nodes", "v1", "no", "false", "Node"),
        ("deployments", "apps/v1", "deploy", "true", "Deployment"),
        ("replicasets", "apps/v1", "rs", "true", "ReplicaSet"),
        ("statefulsets", "apps/v1", "sts", "true", "StatefulSet"),
        ("daemonsets", "apps/v1", "ds", "true", "DaemonSet"),
        ("controllerrevisions", "apps/v1", "", "true", "ControllerRevision"),
    ]
    for name, api_version, short_names, namespaced, kind in expected:
        row = by_name.get((name, api_version))
        assert row is not None, f"{name} ({api_version}) missing from api-resources:\n{rows}"
        assert row == {
            "NAME": name,
            "SHORTNAMES": short_names,
            "APIVERSION": api_version,
            "NAMESPACED": namespaced,
            "KIND": kind,
        }

    apps = kubectl("api-resources", "--api-group=apps", "-o", "name").stdout.split()
    assert set(apps) == {
        "controllerrevisions.apps",
        "daemonsets.apps",
        "deployments.apps",
        "replicasets.apps",
        "statefulsets.apps",
    }, apps


def test_kubectl_api_versions_lists_served_group_versions(kubectl):
    versions = kubectl("api-versions").stdout.split()
    assert versions == sorted(versions), versions
    assert len(versions) == len(set(versions)), versions
    for expected in ("v1", "apps/v1", "autoscaling/v1", "autoscaling/v2", "batch/v1", "coordination.k8s.io/v1"):
        assert expected in versions, f"{expected} missing from api-versions: {versions}"
