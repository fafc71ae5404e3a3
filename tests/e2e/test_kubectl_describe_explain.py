"""`kubectl describe` and `kubectl explain`: what they print for objects the server
stores and for the schema it publishes."""


def normalized(text: str) -> list[str]:
    """The output's lines with runs of blanks (tabwriter padding) collapsed to one space."""
    return [" ".join(line.split()) for line in text.splitlines()]


def test_kubectl_describe_configmap(kubectl, tug, namespace):
    tug.create(
        f"/api/v1/namespaces/{namespace}/configmaps",
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "settings", "labels": {"app": "demo"}, "annotations": {"note": "hello"}},
            "data": {"greeting": "hi there"},
        },
    )

    lines = normalized(kubectl("describe", "configmap", "settings", "-n", namespace).stdout)
    assert lines[:4] == [
        "Name: settings",
        f"Namespace: {namespace}",
        "Labels: app=demo",
        "Annotations: note: hello",
    ], lines
    data = lines.index("Data")
    assert lines[data : data + 4] == ["Data", "====", "greeting:", "----"], lines
    assert lines[data + 4] == "hi there"
    assert "BinaryData" in lines
    # describe lists the object's events (there are none) through a field-selected list.
    assert lines[-1] == "Events: <none>", lines


def test_kubectl_describe_deployment(kubectl, tug, namespace):
    tug.create(
        f"/apis/apps/v1/namespaces/{namespace}/deployments",
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "containers": [
                            {
                                "name": "web",
                                "image": "127.0.0.1:5000/tugboat/busybox:1",
                                "command": ["httpd", "-f", "-p", "8080"],
                                "ports": [{"containerPort": 8080}],
                            }
                        ]
                    },
                },
            },
        },
    )

    result = kubectl("describe", "deployment", "web", "-n", namespace)
    lines = normalized(result.stdout)
    assert lines[0] == "Name: web"
    assert lines[1] == f"Namespace: {namespace}"
    assert lines[2].startswith("CreationTimestamp: ")
    for expected in (
        "Labels: app=web",
        "Selector: app=web",
        # The server defaulted the strategy.
        "StrategyType: RollingUpdate",
        "MinReadySeconds: 0",
        "RollingUpdateStrategy: 25% max unavailable, 25% max surge",
        "Pod Template:",
        "Containers:",
        "web:",
        "Image: 127.0.0.1:5000/tugboat/busybox:1",
        "Port: 8080/TCP",
    ):
        assert expected in lines, f"{expected!r} not in describe output:\n{result.stdout}"
    replicas = next(line for line in lines if line.startswith("Replicas:"))
    assert replicas.startswith("Replicas: 3 desired | "), replicas


def test_kubectl_explain_field_shows_description_and_type(kubectl):
    lines = normalized(kubectl("explain", "deployment.spec.replicas").stdout)
    # Both versions explain from the OpenAPI v3 document (1.27 made it the default).
    assert lines[:3] == ["GROUP: apps", "KIND: Deployment", "VERSION: v1"], lines
    assert "FIELD: replicas <integer>" in lines, lines
    description = " ".join(lines[lines.index("DESCRIPTION:") + 1 :]).strip()
    assert description.startswith(
        "Number of desired pods. This is a pointer to distinguish between explicit zero and not specified. "
        "Defaults to 1."
    ), description


def test_kubectl_explain_kind_lists_its_fields(kubectl):
    lines = normalized(kubectl("explain", "configmap").stdout)
    assert "KIND: ConfigMap" in lines, lines
    fields = lines[lines.index("FIELDS:") + 1 :]
    for expected in (
        "apiVersion <string>",
        "binaryData <map[string]string>",
        "data <map[string]string>",
        "immutable <boolean>",
        "kind <string>",
        "metadata <ObjectMeta>",
    ):
        assert expected in fields, f"{expected!r} not among the fields:\n{fields}"
