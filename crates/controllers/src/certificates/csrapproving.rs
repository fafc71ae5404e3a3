//! The CSR approver (upstream's `pkg/controller/certificates/approver`, the "csrapproving"
//! controller): approves node agents' client certificate requests made with a bootstrap token
//! or by the node itself (renewal), so that kubelet TLS bootstrapping needs no administrator.
//!
//! Upstream asks the authorizer (a SubjectAccessReview on `certificatesigningrequests/nodeclient`
//! or `.../selfnodeclient`) whether the requester may get such a certificate; clusters bind
//! those to the groups `system:bootstrappers` and `system:nodes` (kubeadm, k3s). Without RBAC we
//! check those group memberships, which is what the bindings grant.
//!
//! Unlike upstream, it also approves `kubernetes.io/kubelet-serving` requests a node makes for
//! itself: that is k3s's behaviour (upstream leaves them to an administrator or an external
//! approver); the API server needs the node's serving certificate to proxy logs and exec.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::certificates::v1::{CertificateSigningRequest, CertificateSigningRequestCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{KUBE_APISERVER_CLIENT_KUBELET, KUBELET_SERVING, NODES_GROUP, ParsedRequest};

/// The condition reason upstream's approver writes.
pub const REASON: &str = "AutoApproved";
const NODE_CLIENT_MESSAGE: &str = "Auto approving kubelet client certificate after SubjectAccessReview.";
const SELF_NODE_CLIENT_MESSAGE: &str = "Auto approving self kubelet client certificate after SubjectAccessReview.";
const SELF_NODE_SERVING_MESSAGE: &str = "Auto approving self kubelet serving certificate.";

/// Groups allowed to request a new node client certificate (upstream's `nodeclient` binding
/// goes to the bootstrappers; administrators may do anything).
const NODE_CLIENT_GROUPS: [&str; 2] = ["system:bootstrappers", "system:masters"];

/// Why a request could not be approved this time; retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("approving certificate signing request {name}")]
    Approve {
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// Runs the approver until `shutdown`.
pub async fn run(client: Client, shutdown: CancellationToken) {
    let api = Api::<CertificateSigningRequest>::all(client);
    Controller::new(api.clone(), watcher::Config::default())
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, Arc::new(api))
        .for_each(|res| async move {
            if let Err(e) = res {
                debug!(error = %e, "csr approver reconcile failed");
            }
        })
        .await;
}

fn error_policy(csr: Arc<CertificateSigningRequest>, err: &Error, _: Arc<Api<CertificateSigningRequest>>) -> Action {
    warn!(csr = %csr.name_any(), error = %err, "csr approval will be retried");
    Action::requeue(Duration::from_secs(5))
}

async fn reconcile(
    csr: Arc<CertificateSigningRequest>,
    api: Arc<Api<CertificateSigningRequest>>,
) -> Result<Action, Error> {
    let Some(message) = approval(&csr) else { return Ok(Action::await_change()) };
    let name = csr.name_any();
    let now = Time(Timestamp::now());
    let mut conditions = csr.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
    conditions.push(CertificateSigningRequestCondition {
        type_: "Approved".into(),
        status: "True".into(),
        reason: Some(REASON.into()),
        message: Some(message.into()),
        last_update_time: Some(now.clone()),
        last_transition_time: Some(now),
    });
    // The resourceVersion makes the write fail on a concurrent change (e.g. a denial).
    let patch = json!({
        "metadata": {"resourceVersion": csr.resource_version()},
        "status": {"conditions": conditions},
    });
    api.patch_approval(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|source| Error::Approve { name: name.clone(), source })?;
    info!(csr = %name, requester = csr.spec.username.as_deref().unwrap_or(""), signer = %csr.spec.signer_name, "approved certificate signing request");
    Ok(Action::await_change())
}

/// The approval message if the request is one this approver approves, else `None` (left to
/// someone else). Requests already approved, denied or issued are left alone.
pub fn approval(csr: &CertificateSigningRequest) -> Option<&'static str> {
    if super::has_condition(csr, "Approved") || super::has_condition(csr, "Denied") {
        return None;
    }
    if csr.status.as_ref().and_then(|s| s.certificate.as_ref()).is_some_and(|c| !c.0.is_empty()) {
        return None;
    }
    let signer = csr.spec.signer_name.as_str();
    if signer != KUBE_APISERVER_CLIENT_KUBELET && signer != KUBELET_SERVING {
        return None;
    }
    let request = super::parse_request(&csr.spec.request.0).ok()?;
    if !request.is_node_subject() {
        return None;
    }
    let username = csr.spec.username.as_deref().unwrap_or_default();
    let in_group = |group: &str| csr.spec.groups.iter().flatten().any(|g| g == group);
    let is_self = request.common_name() == Some(username) && in_group(NODES_GROUP);
    let usages = super::usages(csr);
    if signer == KUBE_APISERVER_CLIENT_KUBELET {
        if !is_node_client_request(&request, &usages) {
            return None;
        }
        if is_self {
            return Some(SELF_NODE_CLIENT_MESSAGE);
        }
        return NODE_CLIENT_GROUPS.iter().any(|g| in_group(g)).then_some(NODE_CLIENT_MESSAGE);
    }
    (is_self && is_node_serving_request(&request, &usages)).then_some(SELF_NODE_SERVING_MESSAGE)
}

/// Upstream's `isNodeClientCert`: no names at all, and exactly the kubelet client usages.
fn is_node_client_request(request: &ParsedRequest, usages: &std::collections::BTreeSet<&str>) -> bool {
    let no_names = request.dns_names.is_empty() && request.ip_addresses.is_empty() && request.other_names == 0;
    let with_encipherment = ["client auth", "digital signature", "key encipherment"];
    let without = ["client auth", "digital signature"];
    no_names && (usages.iter().eq(with_encipherment.iter()) || usages.iter().eq(without.iter()))
}

/// A node's serving certificate: DNS names and IP addresses only (at least one), and the
/// kubelet serving usages.
fn is_node_serving_request(request: &ParsedRequest, usages: &std::collections::BTreeSet<&str>) -> bool {
    let has_names = !request.dns_names.is_empty() || !request.ip_addresses.is_empty();
    let with_encipherment = ["digital signature", "key encipherment", "server auth"];
    let without = ["digital signature", "server auth"];
    has_names
        && request.other_names == 0
        && (usages.iter().eq(with_encipherment.iter()) || usages.iter().eq(without.iter()))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{csr, request_pem};
    use super::*;
    use k8s_openapi::api::certificates::v1::CertificateSigningRequestStatus;
    use rcgen::SanType;

    const CLIENT_USAGES: &[&str] = &["digital signature", "key encipherment", "client auth"];
    const SERVING_USAGES: &[&str] = &["digital signature", "key encipherment", "server auth"];

    fn node_client_request() -> String {
        request_pem("system:node:n1", Some(NODES_GROUP), vec![])
    }

    #[test]
    fn a_bootstrap_token_request_for_a_node_client_certificate_is_approved() {
        let req = csr(
            KUBE_APISERVER_CLIENT_KUBELET,
            &node_client_request(),
            CLIENT_USAGES,
            "node-bootstrap",
            &["system:bootstrappers", "system:authenticated"],
        );
        assert_eq!(approval(&req), Some(NODE_CLIENT_MESSAGE));
    }

    #[test]
    fn a_node_renewing_its_own_client_certificate_is_approved() {
        let req = csr(
            KUBE_APISERVER_CLIENT_KUBELET,
            &node_client_request(),
            &["digital signature", "client auth"],
            "system:node:n1",
            &[NODES_GROUP],
        );
        assert_eq!(approval(&req), Some(SELF_NODE_CLIENT_MESSAGE));
    }

    #[test]
    fn requests_from_other_users_wrong_subjects_or_usages_are_left_alone() {
        let other_user =
            csr(KUBE_APISERVER_CLIENT_KUBELET, &node_client_request(), CLIENT_USAGES, "mallory", &["devs"]);
        assert_eq!(approval(&other_user), None);
        let other_node =
            csr(KUBE_APISERVER_CLIENT_KUBELET, &node_client_request(), CLIENT_USAGES, "system:node:n2", &[NODES_GROUP]);
        assert_eq!(approval(&other_node), None);
        let masters = request_pem("system:node:n1", Some("system:masters"), vec![]);
        let wrong_org =
            csr(KUBE_APISERVER_CLIENT_KUBELET, &masters, CLIENT_USAGES, "node-bootstrap", &["system:bootstrappers"]);
        assert_eq!(approval(&wrong_org), None);
        let admin = request_pem("system:admin", Some(NODES_GROUP), vec![]);
        let wrong_cn =
            csr(KUBE_APISERVER_CLIENT_KUBELET, &admin, CLIENT_USAGES, "node-bootstrap", &["system:bootstrappers"]);
        assert_eq!(approval(&wrong_cn), None);
        let server_usage = csr(
            KUBE_APISERVER_CLIENT_KUBELET,
            &node_client_request(),
            SERVING_USAGES,
            "node-bootstrap",
            &["system:bootstrappers"],
        );
        assert_eq!(approval(&server_usage), None);
        let with_names =
            request_pem("system:node:n1", Some(NODES_GROUP), vec![SanType::IpAddress([10, 0, 0, 1].into())]);
        let named =
            csr(KUBE_APISERVER_CLIENT_KUBELET, &with_names, CLIENT_USAGES, "node-bootstrap", &["system:bootstrappers"]);
        assert_eq!(approval(&named), None);
        let other_signer = csr(
            "example.com/signer",
            &node_client_request(),
            CLIENT_USAGES,
            "node-bootstrap",
            &["system:bootstrappers"],
        );
        assert_eq!(approval(&other_signer), None);
    }

    #[test]
    fn a_node_serving_request_is_approved_only_from_the_node_itself() {
        let sans = vec![SanType::DnsName("n1".try_into().unwrap()), SanType::IpAddress([127, 0, 0, 1].into())];
        let pem = request_pem("system:node:n1", Some(NODES_GROUP), sans);
        let own = csr(KUBELET_SERVING, &pem, SERVING_USAGES, "system:node:n1", &[NODES_GROUP]);
        assert_eq!(approval(&own), Some(SELF_NODE_SERVING_MESSAGE));
        let bootstrap = csr(KUBELET_SERVING, &pem, SERVING_USAGES, "node-bootstrap", &["system:bootstrappers"]);
        assert_eq!(approval(&bootstrap), None);
        let other = csr(KUBELET_SERVING, &pem, SERVING_USAGES, "system:node:n2", &[NODES_GROUP]);
        assert_eq!(approval(&other), None);
        let email = request_pem(
            "system:node:n1",
            Some(NODES_GROUP),
            vec![SanType::Rfc822Name("a@example.com".try_into().unwrap())],
        );
        let with_email = csr(KUBELET_SERVING, &email, SERVING_USAGES, "system:node:n1", &[NODES_GROUP]);
        assert_eq!(approval(&with_email), None);
    }

    #[test]
    fn decided_requests_are_not_approved_again() {
        let mut req = csr(
            KUBE_APISERVER_CLIENT_KUBELET,
            &node_client_request(),
            CLIENT_USAGES,
            "node-bootstrap",
            &["system:bootstrappers"],
        );
        req.status = Some(CertificateSigningRequestStatus {
            conditions: Some(vec![CertificateSigningRequestCondition {
                type_: "Denied".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            certificate: None,
        });
        assert_eq!(approval(&req), None);
    }
}
