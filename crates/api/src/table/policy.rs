//! Printers of access control and admission: role bindings, certificate signing requests and
//! trust bundles, admission webhooks and policies, API priority and fairness.

use std::cmp::Ordering;

use jiff::SignedDuration;
use jiff::Timestamp;
use serde_json::Value;

use super::duration::human_duration;
use super::object::{age, count, get, has, int, list, name, opt_int, text};
use super::{AGE, Column, NAME, Printer, docs};

pub(super) const PRINTERS: &[Printer] = &[
    Printer::new("rbac.authorization.k8s.io", "RoleBinding", ROLE_BINDING_COLUMNS, binding_cells),
    Printer::new("rbac.authorization.k8s.io", "ClusterRoleBinding", CLUSTER_ROLE_BINDING_COLUMNS, binding_cells),
    Printer::new("certificates.k8s.io", "CertificateSigningRequest", CSR_COLUMNS, csr_cells),
    Printer::new("certificates.k8s.io", "ClusterTrustBundle", TRUST_BUNDLE_COLUMNS, trust_bundle_cells),
    Printer::new("admissionregistration.k8s.io", "MutatingWebhookConfiguration", WEBHOOK_COLUMNS, webhook_cells),
    Printer::new("admissionregistration.k8s.io", "ValidatingWebhookConfiguration", WEBHOOK_COLUMNS, webhook_cells),
    Printer::new("admissionregistration.k8s.io", "ValidatingAdmissionPolicy", VAP_COLUMNS, vap_cells),
    Printer::new(
        "admissionregistration.k8s.io",
        "ValidatingAdmissionPolicyBinding",
        POLICY_BINDING_COLUMNS,
        policy_binding_cells,
    ),
    Printer::new("admissionregistration.k8s.io", "MutatingAdmissionPolicy", MAP_COLUMNS, map_cells),
    Printer::new(
        "admissionregistration.k8s.io",
        "MutatingAdmissionPolicyBinding",
        POLICY_BINDING_COLUMNS,
        policy_binding_cells,
    ),
    Printer {
        order: Some(flow_schema_order),
        ..Printer::new("flowcontrol.apiserver.k8s.io", "FlowSchema", FLOW_SCHEMA_COLUMNS, flow_schema_cells)
    },
    Printer::new(
        "flowcontrol.apiserver.k8s.io",
        "PriorityLevelConfiguration",
        PRIORITY_LEVEL_COLUMNS,
        priority_level_cells,
    ),
];

const ROLE_BINDING_COLUMNS: &[Column] = &[
    NAME,
    Column::string("Role", docs::ROLE_BINDING_ROLE_REF),
    AGE,
    Column::string("Users", "Users in the roleBinding").wide(),
    Column::string("Groups", "Groups in the roleBinding").wide(),
    Column::string("ServiceAccounts", "ServiceAccounts in the roleBinding").wide(),
];

const CLUSTER_ROLE_BINDING_COLUMNS: &[Column] = &[
    NAME,
    Column::string("Role", docs::CLUSTER_ROLE_BINDING_ROLE_REF),
    AGE,
    Column::string("Users", "Users in the clusterRoleBinding").wide(),
    Column::string("Groups", "Groups in the clusterRoleBinding").wide(),
    Column::string("ServiceAccounts", "ServiceAccounts in the clusterRoleBinding").wide(),
];

fn binding_cells(binding: &Value, now: Timestamp) -> Vec<Value> {
    let role = format!("{}/{}", text(binding, "/roleRef/kind"), text(binding, "/roleRef/name"));
    let (mut users, mut groups, mut service_accounts) = (Vec::new(), Vec::new(), Vec::new());
    for subject in list(binding, "/subjects") {
        match text(subject, "/kind") {
            "User" => users.push(text(subject, "/name").to_string()),
            "Group" => groups.push(text(subject, "/name").to_string()),
            "ServiceAccount" => {
                service_accounts.push(format!("{}/{}", text(subject, "/namespace"), text(subject, "/name")));
            }
            _ => {}
        }
    }
    vec![
        name(binding).into(),
        role.into(),
        age(binding, now).into(),
        users.join(", ").into(),
        groups.join(", ").into(),
        service_accounts.join(", ").into(),
    ]
}

const CSR_COLUMNS: &[Column] = &[
    NAME,
    AGE,
    Column::string("SignerName", docs::CSR_SPEC_SIGNER_NAME),
    Column::string("Requestor", docs::CSR_SPEC_REQUEST),
    Column::string("RequestedDuration", docs::CSR_SPEC_EXPIRATION_SECONDS),
    Column::string("Condition", docs::CSR_STATUS_CONDITIONS),
];

/// `Pending`, `Approved` or `Denied` (denial wins), then `,Failed` and `,Issued` when so.
fn csr_condition(csr: &Value) -> String {
    let conditions = list(csr, "/status/conditions");
    let seen = |kind: &str| conditions.iter().any(|c| text(c, "/type") == kind);
    let mut status = if seen("Denied") {
        "Denied"
    } else if seen("Approved") {
        "Approved"
    } else {
        "Pending"
    }
    .to_string();
    if seen("Failed") {
        status.push_str(",Failed");
    }
    if !text(csr, "/status/certificate").is_empty() {
        status.push_str(",Issued");
    }
    status
}

fn csr_cells(csr: &Value, now: Timestamp) -> Vec<Value> {
    let signer = match text(csr, "/spec/signerName") {
        "" => "<none>",
        signer => signer,
    };
    let requested = opt_int(csr, "/spec/expirationSeconds")
        .map_or_else(|| "<none>".into(), |s| human_duration(SignedDuration::from_secs(s)));
    vec![
        name(csr).into(),
        age(csr, now).into(),
        signer.into(),
        text(csr, "/spec/username").into(),
        requested.into(),
        csr_condition(csr).into(),
    ]
}

const TRUST_BUNDLE_COLUMNS: &[Column] = &[NAME, Column::string("SignerName", docs::CTB_SPEC_SIGNER_NAME)];

fn trust_bundle_cells(bundle: &Value, _now: Timestamp) -> Vec<Value> {
    let signer = match text(bundle, "/spec/signerName") {
        "" => "<none>",
        signer => signer,
    };
    vec![name(bundle).into(), signer.into()]
}

const WEBHOOK_COLUMNS: &[Column] = &[
    NAME,
    Column::integer("Webhooks", "Webhooks indicates the number of webhooks registered in this configuration"),
    AGE,
];

fn webhook_cells(config: &Value, now: Timestamp) -> Vec<Value> {
    vec![name(config).into(), count(config, "/webhooks").into(), age(config, now).into()]
}

const PARAM_KIND: Column =
    Column::string("ParamKind", "ParamKind specifies the kind of resources used to parameterize this policy");

const VAP_COLUMNS: &[Column] = &[
    NAME,
    Column::integer(
        "Validations",
        "Validations indicates the number of validation rules defined in this configuration",
    ),
    PARAM_KIND,
    AGE,
];

const MAP_COLUMNS: &[Column] = &[
    NAME,
    Column::integer("Mutations", "Mutation indicates the number of mutations rules defined in this configuration"),
    PARAM_KIND,
    AGE,
];

fn param_kind(policy: &Value) -> String {
    if has(policy, "/spec/paramKind") {
        format!("{}/{}", text(policy, "/spec/paramKind/apiVersion"), text(policy, "/spec/paramKind/kind"))
    } else {
        "<unset>".into()
    }
}

fn vap_cells(policy: &Value, now: Timestamp) -> Vec<Value> {
    vec![
        name(policy).into(),
        count(policy, "/spec/validations").into(),
        param_kind(policy).into(),
        age(policy, now).into(),
    ]
}

fn map_cells(policy: &Value, now: Timestamp) -> Vec<Value> {
    vec![
        name(policy).into(),
        count(policy, "/spec/mutations").into(),
        param_kind(policy).into(),
        age(policy, now).into(),
    ]
}

const POLICY_BINDING_COLUMNS: &[Column] = &[
    NAME,
    Column::string("PolicyName", "PolicyName indicates the policy definition which the policy binding binded to"),
    Column::string("ParamRef", "ParamRef indicates the param resource which sets the configration param"),
    AGE,
];

/// A label selector as Go's generated `String()` method prints the struct: upstream shows a
/// selecting parameter reference that way.
fn selector_struct_string(selector: &Value) -> String {
    let mut labels: Vec<(&String, &Value)> =
        get(selector, "/matchLabels").and_then(Value::as_object).map(|m| m.iter().collect()).unwrap_or_default();
    labels.sort_by(|a, b| a.0.cmp(b.0));
    let labels: String = labels.iter().map(|(k, v)| format!("{k}: {},", v.as_str().unwrap_or(""))).collect();
    let expressions: String = list(selector, "/matchExpressions")
        .iter()
        .map(|e| {
            let values: Vec<&str> = list(e, "/values").iter().filter_map(Value::as_str).collect();
            format!(
                "LabelSelectorRequirement{{Key:{},Operator:{},Values:[{}],}},",
                text(e, "/key"),
                text(e, "/operator"),
                values.join(" ")
            )
        })
        .collect();
    format!(
        "&LabelSelector{{MatchLabels:map[string]string{{{labels}}},MatchExpressions:[]LabelSelectorRequirement{{{expressions}}},}}"
    )
}

fn policy_binding_cells(binding: &Value, now: Timestamp) -> Vec<Value> {
    let param = match get(binding, "/spec/paramRef") {
        None => "<unset>".to_string(),
        Some(p) => match (text(p, "/name"), text(p, "/namespace")) {
            ("", _) => get(p, "/selector").map_or_else(|| "<unset>".into(), selector_struct_string),
            // Without a namespace the parameter may be cluster-scoped or in any namespace.
            (param, "") => format!("*/{param}"),
            (param, namespace) => format!("{namespace}/{param}"),
        },
    };
    vec![name(binding).into(), text(binding, "/spec/policyName").into(), param.into(), age(binding, now).into()]
}

const FLOW_SCHEMA_COLUMNS: &[Column] = &[
    NAME,
    Column::string("PriorityLevel", docs::FLOW_SCHEMA_PRIORITY_LEVEL),
    Column::string("MatchingPrecedence", docs::FLOW_SCHEMA_PRECEDENCE),
    Column::string("DistinguisherMethod", docs::FLOW_SCHEMA_DISTINGUISHER),
    AGE,
    Column::string("MissingPL", "references a broken or non-existent PriorityLevelConfiguration"),
];

/// Defaulting gives flow schemas a matching precedence of 1000.
fn matching_precedence(fs: &Value) -> i64 {
    opt_int(fs, "/spec/matchingPrecedence").unwrap_or(1000)
}

/// Flow schemas list in the order the API server matches them: by precedence, then name.
fn flow_schema_order(a: &Value, b: &Value) -> Ordering {
    matching_precedence(a).cmp(&matching_precedence(b)).then_with(|| name(a).cmp(name(b)))
}

fn flow_schema_cells(fs: &Value, now: Timestamp) -> Vec<Value> {
    let distinguisher = match text(fs, "/spec/distinguisherMethod/type") {
        _ if !has(fs, "/spec/distinguisherMethod") => "<none>",
        method => method,
    };
    let missing = list(fs, "/status/conditions")
        .iter()
        .find(|c| text(c, "/type") == "Dangling")
        .map_or("?", |c| text(c, "/status"));
    vec![
        name(fs).into(),
        text(fs, "/spec/priorityLevelConfiguration/name").into(),
        matching_precedence(fs).into(),
        distinguisher.into(),
        age(fs, now).into(),
        missing.into(),
    ]
}

const PRIORITY_LEVEL_COLUMNS: &[Column] = &[
    NAME,
    Column::string("Type", docs::PLC_SPEC_TYPE),
    Column::string("NominalConcurrencyShares", docs::PLC_NOMINAL_SHARES),
    Column::string("Queues", docs::PLC_QUEUES),
    Column::string("HandSize", docs::PLC_HAND_SIZE),
    Column::string("QueueLengthLimit", docs::PLC_QUEUE_LENGTH_LIMIT),
    AGE,
];

fn priority_level_cells(pl: &Value, now: Timestamp) -> Vec<Value> {
    let none = || Value::from("<none>");
    let (mut shares, mut queues, mut hand_size, mut queue_length) = (none(), none(), none(), none());
    if let Some(limited) = get(pl, "/spec/limited") {
        // The API's defaults, for levels stored before defaulting.
        shares = opt_int(limited, "/nominalConcurrencyShares").unwrap_or(30).into();
        if let Some(queuing) = get(limited, "/limitResponse/queuing") {
            let or_default = |pointer: &str, default: i64| match int(queuing, pointer) {
                0 => default,
                set => set,
            };
            queues = or_default("/queues", 64).into();
            hand_size = or_default("/handSize", 8).into();
            queue_length = or_default("/queueLengthLimit", 50).into();
        }
    }
    vec![name(pl).into(), text(pl, "/spec/type").into(), shares, queues, hand_size, queue_length, age(pl, now).into()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> Timestamp {
        "2024-05-01T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn role_binding_shows_role_and_wide_subjects() {
        let rb = json!({
            "metadata": {"name": "admins", "creationTimestamp": "2024-05-01T11:59:50Z"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
            "subjects": [{"kind": "User", "name": "alice"}, {"kind": "User", "name": "bob"}, {"kind": "Group", "name": "ops"},
                {"kind": "ServiceAccount", "namespace": "ci", "name": "deployer"}],
        });
        assert_eq!(
            binding_cells(&rb, now()),
            [
                json!("admins"),
                json!("ClusterRole/admin"),
                json!("10s"),
                json!("alice, bob"),
                json!("ops"),
                json!("ci/deployer")
            ]
        );
    }

    #[test]
    fn csr_shows_signer_requestor_duration_and_condition() {
        let csr = json!({
            "metadata": {"name": "node-csr-1"},
            "spec": {"signerName": "kubernetes.io/kube-apiserver-client-kubelet", "username": "system:node:n1", "expirationSeconds": 86400},
            "status": {"conditions": [{"type": "Approved", "status": "True"}], "certificate": "LS0t"},
        });
        assert_eq!(
            csr_cells(&csr, now())[2..],
            [
                json!("kubernetes.io/kube-apiserver-client-kubelet"),
                json!("system:node:n1"),
                json!("24h"),
                json!("Approved,Issued")
            ]
        );
        let denied = json!({"metadata": {"name": "x"}, "status": {"conditions": [{"type": "Approved"}, {"type": "Denied"}, {"type": "Failed"}]}});
        assert_eq!(
            csr_cells(&denied, now())[2..],
            [json!("<none>"), json!(""), json!("<none>"), json!("Denied,Failed")]
        );
    }

    #[test]
    fn webhook_configurations_count_their_webhooks() {
        let config =
            json!({"metadata": {"name": "policy"}, "webhooks": [{"name": "a.example.com"}, {"name": "b.example.com"}]});
        assert_eq!(webhook_cells(&config, now())[1], 2);
        assert_eq!(webhook_cells(&json!({"metadata": {"name": "empty"}}), now())[1], 0);
    }

    #[test]
    fn admission_policies_and_bindings() {
        let vap = json!({"metadata": {"name": "replicas"}, "spec": {"paramKind": {"apiVersion": "v1", "kind": "ConfigMap"}, "validations": [{"expression": "true"}]}});
        assert_eq!(vap_cells(&vap, now())[1..3], [json!(1), json!("v1/ConfigMap")]);
        let binding =
            |param: Value| json!({"metadata": {"name": "b"}, "spec": {"policyName": "replicas", "paramRef": param}});
        assert_eq!(
            policy_binding_cells(&binding(json!({"name": "limits", "namespace": "prod"})), now())[2],
            "prod/limits"
        );
        assert_eq!(policy_binding_cells(&binding(json!({"name": "limits"})), now())[2], "*/limits");
        assert_eq!(
            policy_binding_cells(&binding(json!({"selector": {"matchLabels": {"env": "prod"}}})), now())[2],
            "&LabelSelector{MatchLabels:map[string]string{env: prod,},MatchExpressions:[]LabelSelectorRequirement{},}"
        );
        assert_eq!(policy_binding_cells(&json!({"metadata": {"name": "b"}, "spec": {}}), now())[2], "<unset>");
    }

    #[test]
    fn flow_schemas_sort_by_precedence_and_show_missing_levels() {
        let fs = |n: &str, p: i64| {
            json!({"metadata": {"name": n}, "spec": {"matchingPrecedence": p, "priorityLevelConfiguration": {"name": "workload-low"},
            "distinguisherMethod": {"type": "ByUser"}}, "status": {"conditions": [{"type": "Dangling", "status": "False"}]}})
        };
        let mut all = [fs("b", 9000), fs("a", 9000), fs("exempt", 1)];
        all.sort_by(flow_schema_order);
        let names: Vec<&str> = all.iter().map(name).collect();
        assert_eq!(names, ["exempt", "a", "b"]);
        assert_eq!(flow_schema_cells(&all[0], now())[1..4], [json!("workload-low"), json!(1), json!("ByUser")]);
        assert_eq!(flow_schema_cells(&all[0], now())[5], "False");
        assert_eq!(
            flow_schema_cells(&json!({"metadata": {"name": "n"}}), now())[3..],
            [json!("<none>"), json!("<unknown>"), json!("?")]
        );
    }

    #[test]
    fn priority_levels_show_queuing_or_none_when_exempt() {
        let limited = json!({"metadata": {"name": "workload-low"}, "spec": {"type": "Limited", "limited": {"nominalConcurrencyShares": 100,
            "limitResponse": {"type": "Queue", "queuing": {"queues": 128, "handSize": 6, "queueLengthLimit": 50}}}}});
        assert_eq!(
            priority_level_cells(&limited, now())[1..6],
            [json!("Limited"), json!(100), json!(128), json!(6), json!(50)]
        );
        let exempt = json!({"metadata": {"name": "exempt"}, "spec": {"type": "Exempt", "exempt": {}}});
        assert_eq!(
            priority_level_cells(&exempt, now())[2..6],
            [json!("<none>"), json!("<none>"), json!("<none>"), json!("<none>")]
        );
    }
}
