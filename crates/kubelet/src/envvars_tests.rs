use super::*;
use crate::volumemanager::source::FakeSource;

const NODE: NodeAllocatable = NodeAllocatable { cpu: 4.0, memory: 8.0 * 1073741824.0, ephemeral_storage: 1e10 };

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap()
}

fn pod(spec: serde_json::Value) -> Pod {
    obj(serde_json::json!({
        "metadata": {"name": "p", "namespace": "team", "uid": "u-9", "labels": {"app": "web"},
            "annotations": {"owner": "ops"}},
        "spec": spec,
        "status": {"hostIPs": [{"ip": "192.168.5.10"}]}
    }))
}

fn source() -> FakeSource {
    FakeSource {
        config_maps: vec![obj(serde_json::json!({
            "metadata": {"name": "cfg", "namespace": "team"}, "data": {"MODE": "fast", "LEVEL": "3"}
        }))],
        secrets: vec![obj(serde_json::json!({
            "metadata": {"name": "creds", "namespace": "team"}, "data": {"PASSWORD": "aHVudGVyMg=="}
        }))],
        services: vec![
            obj(serde_json::json!({"metadata": {"name": "kubernetes", "namespace": "default"},
                "spec": {"clusterIP": "10.43.0.1", "ports": [{"name": "https", "port": 443, "protocol": "TCP"}]}})),
            obj(serde_json::json!({"metadata": {"name": "redis-primary", "namespace": "team"},
                "spec": {"clusterIP": "10.43.0.20", "ports": [{"port": 6379}, {"name": "metrics", "port": 9121, "protocol": "TCP"}]}})),
            obj(serde_json::json!({"metadata": {"name": "headless", "namespace": "team"},
                "spec": {"clusterIP": "None", "ports": [{"port": 80}]}})),
            obj(serde_json::json!({"metadata": {"name": "elsewhere", "namespace": "other"},
                "spec": {"clusterIP": "10.43.0.30", "ports": [{"port": 80}]}})),
        ],
        ..Default::default()
    }
}

async fn env_of(pod: &Pod, source: &FakeSource) -> Result<Vec<(String, String)>, EnvError> {
    let ips = ["10.42.0.7".to_owned(), "fd00::7".to_owned()];
    let ctx = EnvContext { pod, node_name: "node-1", host_ip: "192.168.5.10", pod_ips: &ips };
    let container = pod.spec.as_ref().unwrap().containers[0].clone();
    container_env_from(source, &ctx, &container, &NODE).await
}

fn lookup<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn service_links_of_namespace_and_master_service() {
    let env = env_of(&pod(serde_json::json!({"containers": [{"name": "c"}]})), &source()).await.unwrap();
    let expected = [
        ("KUBERNETES_SERVICE_HOST", "10.43.0.1"),
        ("KUBERNETES_SERVICE_PORT", "443"),
        ("KUBERNETES_SERVICE_PORT_HTTPS", "443"),
        ("KUBERNETES_PORT", "tcp://10.43.0.1:443"),
        ("KUBERNETES_PORT_443_TCP", "tcp://10.43.0.1:443"),
        ("KUBERNETES_PORT_443_TCP_PROTO", "tcp"),
        ("KUBERNETES_PORT_443_TCP_PORT", "443"),
        ("KUBERNETES_PORT_443_TCP_ADDR", "10.43.0.1"),
        ("REDIS_PRIMARY_SERVICE_HOST", "10.43.0.20"),
        ("REDIS_PRIMARY_SERVICE_PORT", "6379"),
        ("REDIS_PRIMARY_SERVICE_PORT_METRICS", "9121"),
        ("REDIS_PRIMARY_PORT", "tcp://10.43.0.20:6379"),
        ("REDIS_PRIMARY_PORT_6379_TCP", "tcp://10.43.0.20:6379"),
        ("REDIS_PRIMARY_PORT_6379_TCP_PROTO", "tcp"),
        ("REDIS_PRIMARY_PORT_6379_TCP_PORT", "6379"),
        ("REDIS_PRIMARY_PORT_6379_TCP_ADDR", "10.43.0.20"),
        ("REDIS_PRIMARY_PORT_9121_TCP", "tcp://10.43.0.20:9121"),
        ("REDIS_PRIMARY_PORT_9121_TCP_PROTO", "tcp"),
        ("REDIS_PRIMARY_PORT_9121_TCP_PORT", "9121"),
        ("REDIS_PRIMARY_PORT_9121_TCP_ADDR", "10.43.0.20"),
    ];
    let got: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn disabled_service_links_keep_only_the_master_service() {
    let p = pod(serde_json::json!({"enableServiceLinks": false, "containers": [{"name": "c"}]}));
    let env = env_of(&p, &source()).await.unwrap();
    assert!(env.iter().all(|(k, _)| k.starts_with("KUBERNETES_")), "{env:?}");
    assert_eq!(lookup(&env, "KUBERNETES_SERVICE_HOST"), Some("10.43.0.1"));
}

#[tokio::test]
async fn env_from_prefix_then_env_overrides_and_expands() {
    let p = pod(serde_json::json!({"enableServiceLinks": false, "containers": [{"name": "c",
    "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}, {"secretRef": {"name": "creds"}},
                {"configMapRef": {"name": "absent", "optional": true}}],
    "env": [
        {"name": "CFG_MODE", "value": "slow"},
        {"name": "GREETING", "value": "mode=$(CFG_MODE) pw=$(PASSWORD) api=$(KUBERNETES_SERVICE_HOST) $(UNKNOWN) $$(ESCAPED)"},
        {"name": "EMPTY", "value": ""}
    ]}]}));
    let env = env_of(&p, &source()).await.unwrap();
    assert_eq!(lookup(&env, "CFG_LEVEL"), Some("3"));
    assert_eq!(lookup(&env, "CFG_MODE"), Some("slow"));
    assert_eq!(lookup(&env, "PASSWORD"), Some("hunter2"));
    assert_eq!(lookup(&env, "GREETING"), Some("mode=slow pw=hunter2 api=10.43.0.1 $(UNKNOWN) $(ESCAPED)"));
    assert_eq!(lookup(&env, "EMPTY"), Some(""));
    assert_eq!(env.iter().filter(|(k, _)| k == "CFG_MODE").count(), 1, "an override replaces, not duplicates");
    let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).filter(|k| !k.starts_with("KUBERNETES")).collect();
    assert_eq!(names, ["CFG_LEVEL", "CFG_MODE", "PASSWORD", "GREETING", "EMPTY"], "declaration order");
}

#[tokio::test]
async fn value_from_fields_resources_and_keys() {
    let p = pod(
        serde_json::json!({"serviceAccountName": "robot", "enableServiceLinks": false, "containers": [{"name": "c",
        "resources": {"limits": {"memory": "128Mi"}, "requests": {"cpu": "500m"}},
        "env": [
            {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "OWNER", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['owner']"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "POD_IPS", "valueFrom": {"fieldRef": {"fieldPath": "status.podIPs"}}},
            {"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
            {"name": "HOST_IPS", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIPs"}}},
            {"name": "MEM_MI", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
            {"name": "CPU_M", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}}},
            {"name": "CPU_LIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
            {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "LEVEL"}}},
            {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "PASSWORD"}}},
            {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "nope", "optional": true}}}
        ]}]}),
    );
    let env = env_of(&p, &source()).await.unwrap();
    let expect = [
        ("NAME", "p"),
        ("NS", "team"),
        ("UID", "u-9"),
        ("APP", "web"),
        ("OWNER", "ops"),
        ("NODE", "node-1"),
        ("SA", "robot"),
        ("POD_IP", "10.42.0.7"),
        ("POD_IPS", "10.42.0.7,fd00::7"),
        ("HOST_IP", "192.168.5.10"),
        ("HOST_IPS", "192.168.5.10"),
        ("MEM_MI", "128"),
        ("CPU_M", "500"),
        ("CPU_LIMIT", "4"),
        ("LEVEL", "3"),
        ("PW", "hunter2"),
    ];
    for (name, value) in expect {
        assert_eq!(lookup(&env, name), Some(value), "{name}");
    }
    assert_eq!(lookup(&env, "OPT"), None, "an optional missing key is left out");
}

#[tokio::test]
async fn missing_objects_and_keys_use_upstream_messages() {
    let case = |env: serde_json::Value| pod(serde_json::json!({"containers": [{"name": "c", "env": env}]}));
    let cases = [
        (
            serde_json::json!([{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "x", "key": "k"}}}]),
            "configmap \"x\" not found",
        ),
        (
            serde_json::json!([{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "y"}}}]),
            "couldn't find key y in ConfigMap team/cfg",
        ),
        (
            serde_json::json!([{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]),
            "secret \"s\" not found",
        ),
        (
            serde_json::json!([{"name": "A", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "k"}}}]),
            "couldn't find key k in Secret team/creds",
        ),
    ];
    for (env, message) in cases {
        assert_eq!(env_of(&case(env), &source()).await.unwrap_err().to_string(), message);
    }
    let from = pod(serde_json::json!({"containers": [{"name": "c", "envFrom": [{"secretRef": {"name": "gone"}}]}]}));
    assert_eq!(env_of(&from, &source()).await.unwrap_err().to_string(), "secret \"gone\" not found");
}

#[test]
fn expansion_follows_upstream() {
    let env = vec![("A".to_owned(), "1".to_owned()), ("B".to_owned(), "two".to_owned())];
    assert_eq!(expand("$(A)-$(B)", &env), "1-two");
    assert_eq!(expand("$$(A)", &env), "$(A)");
    assert_eq!(expand("$(C)", &env), "$(C)");
    assert_eq!(expand("$A $", &env), "$A $");
    assert_eq!(expand("$(A", &env), "$(A");
    assert_eq!(expand("$$$(A)", &env), "$1");
    assert_eq!(expand("é$(A)é", &env), "é1é");
    assert_eq!(expand("", &env), "");
}
