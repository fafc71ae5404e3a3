//! The CSR signer (upstream's `pkg/controller/certificates/signer`, the "csrsigning"
//! controller): issues approved requests of the built-in signers `kube-apiserver-client-kubelet`,
//! `kubelet-serving` and `kube-apiserver-client` with the cluster CA, writing the PEM
//! certificate into `status.certificate`. Denied and failed requests are left alone; a request
//! its signer does not allow is marked `Failed` with reason `SignerValidationFailure`, as
//! upstream does.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::certificates::v1::{CertificateSigningRequest, CertificateSigningRequestCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use rcgen::{
    CertificateSigningRequestParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{KUBE_APISERVER_CLIENT, KUBE_APISERVER_CLIENT_KUBELET, KUBELET_SERVING, ParsedRequest, SigningCa};

/// Upstream's default `--cluster-signing-duration`.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// The least `spec.expirationSeconds` honoured (upstream's minimum).
const MIN_DURATION: Duration = Duration::from_secs(600);
/// Upstream backdates certificates by five minutes for clocks that lag.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// Why the signer cannot start, or a request could not be issued this time.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("loading the signing CA")]
    LoadCa(#[source] rcgen::Error),
    #[error("writing the certificate of certificate signing request {name}")]
    Write {
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// Why a request is not signed: the signer's policy refuses it. Recorded as a `Failed` condition.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignError {
    #[error("{0}")]
    Parse(String),
    #[error("invalid usage for {signer}: {usage}")]
    Usage { signer: String, usage: String },
    #[error("{signer} requires usage {usage}")]
    MissingUsage { signer: String, usage: &'static str },
    #[error("subject must be organization \"system:nodes\" and common name \"system:node:<name>\" for {signer}")]
    Subject { signer: String },
    #[error("{signer} allows only DNS names and IP addresses as subject alternative names, and at least one")]
    Names { signer: String },
    #[error("{signer} allows no subject alternative names")]
    NoNamesAllowed { signer: String },
    #[error("signing the certificate: {0}")]
    Sign(String),
}

struct Context {
    api: Api<CertificateSigningRequest>,
    issuer: Issuer<'static, KeyPair>,
}

/// Loads the CA into an issuer.
pub fn issuer(ca: &SigningCa) -> Result<Issuer<'static, KeyPair>, Error> {
    let key = KeyPair::from_pem(&ca.key_pem).map_err(Error::LoadCa)?;
    Issuer::from_ca_cert_pem(&ca.cert_pem, key).map_err(Error::LoadCa)
}

/// Runs the signer with `ca` until `shutdown`.
pub async fn run(client: Client, ca: SigningCa, shutdown: CancellationToken) {
    let issuer = match issuer(&ca) {
        Ok(issuer) => issuer,
        Err(e) => {
            warn!(error = %e, "the csr signer cannot run");
            return;
        }
    };
    let api = Api::<CertificateSigningRequest>::all(client);
    let ctx = Arc::new(Context { api: api.clone(), issuer });
    Controller::new(api, watcher::Config::default())
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                debug!(error = %e, "csr signer reconcile failed");
            }
        })
        .await;
}

fn error_policy(csr: Arc<CertificateSigningRequest>, err: &Error, _: Arc<Context>) -> Action {
    warn!(csr = %csr.name_any(), error = %err, "csr signing will be retried");
    Action::requeue(Duration::from_secs(5))
}

/// Whether the signer has work for the request: approved, not denied or failed, not issued, and
/// of a signer it serves.
pub fn wants_signing(csr: &CertificateSigningRequest) -> bool {
    let issued = csr.status.as_ref().and_then(|s| s.certificate.as_ref()).is_some_and(|c| !c.0.is_empty());
    super::has_condition(csr, "Approved")
        && !super::has_condition(csr, "Denied")
        && !super::has_condition(csr, "Failed")
        && !issued
        && [KUBE_APISERVER_CLIENT_KUBELET, KUBELET_SERVING, KUBE_APISERVER_CLIENT]
            .contains(&csr.spec.signer_name.as_str())
}

async fn reconcile(csr: Arc<CertificateSigningRequest>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !wants_signing(&csr) {
        return Ok(Action::await_change());
    }
    let name = csr.name_any();
    let status = match sign(&csr, &ctx.issuer, SystemTime::now()) {
        Ok(pem) => json!({"certificate": base64::engine::general_purpose::STANDARD.encode(pem)}),
        Err(e) => {
            warn!(csr = %name, error = %e, "refusing to sign certificate signing request");
            let now = Time(Timestamp::now());
            let mut conditions = csr.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
            conditions.push(CertificateSigningRequestCondition {
                type_: "Failed".into(),
                status: "True".into(),
                reason: Some("SignerValidationFailure".into()),
                message: Some(e.to_string()),
                last_update_time: Some(now.clone()),
                last_transition_time: Some(now),
            });
            json!({"conditions": conditions})
        }
    };
    let patch = json!({"metadata": {"resourceVersion": csr.resource_version()}, "status": status});
    ctx.api
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|source| Error::Write { name: name.clone(), source })?;
    info!(csr = %name, signer = %csr.spec.signer_name, "signed certificate signing request");
    Ok(Action::await_change())
}

/// Issues the certificate a request asks for, as its signer allows, valid from `now` (less the
/// backdate) for `spec.expirationSeconds` (at least ten minutes, at most a year). Returns PEM.
pub fn sign(
    csr: &CertificateSigningRequest,
    issuer: &Issuer<'_, KeyPair>,
    now: SystemTime,
) -> Result<String, SignError> {
    let signer = csr.spec.signer_name.as_str();
    let request = super::parse_request(&csr.spec.request.0).map_err(|e| SignError::Parse(e.to_string()))?;
    validate(signer, &request, &super::usages(csr))?;
    let pem = std::str::from_utf8(&csr.spec.request.0).map_err(|e| SignError::Parse(e.to_string()))?;
    let mut params = CertificateSigningRequestParams::from_pem(pem).map_err(|e| SignError::Parse(e.to_string()))?;
    // rcgen keeps one value per attribute type; the subject is rebuilt from what was validated.
    let mut subject = DistinguishedName::new();
    for org in &request.organizations {
        subject.push(DnType::OrganizationName, org.as_str());
    }
    for cn in &request.common_names {
        subject.push(DnType::CommonName, cn.as_str());
    }
    let cert = &mut params.params;
    cert.distinguished_name = subject;
    cert.is_ca = IsCa::ExplicitNoCa;
    cert.key_usages = Vec::new();
    cert.extended_key_usages = Vec::new();
    for usage in super::usages(csr) {
        match usage {
            "digital signature" => cert.key_usages.push(KeyUsagePurpose::DigitalSignature),
            "key encipherment" => cert.key_usages.push(KeyUsagePurpose::KeyEncipherment),
            "client auth" => cert.extended_key_usages.push(ExtendedKeyUsagePurpose::ClientAuth),
            "server auth" => cert.extended_key_usages.push(ExtendedKeyUsagePurpose::ServerAuth),
            _ => {}
        }
    }
    cert.use_authority_key_identifier_extension = true;
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    cert.not_before = epoch + since_epoch.saturating_sub(BACKDATE);
    cert.not_after = epoch + since_epoch + duration(csr.spec.expiration_seconds);
    let issued = params.signed_by(issuer).map_err(|e| SignError::Sign(e.to_string()))?;
    Ok(issued.pem())
}

/// The validity upstream gives: `expirationSeconds` clamped to [10 min, the signing duration].
fn duration(expiration_seconds: Option<i32>) -> Duration {
    match expiration_seconds {
        Some(secs) => Duration::from_secs(u64::try_from(secs).unwrap_or(0)).clamp(MIN_DURATION, DEFAULT_DURATION),
        None => DEFAULT_DURATION,
    }
}

/// The signers' policies (upstream's `capihelper.ValidateKubeletClientCSR`,
/// `ValidateKubeletServingCSR` and the kube-apiserver-client usage check).
fn validate(signer: &str, request: &ParsedRequest, usages: &std::collections::BTreeSet<&str>) -> Result<(), SignError> {
    let (allowed, required): (&[&str], &'static str) = match signer {
        KUBELET_SERVING => (&["digital signature", "key encipherment", "server auth"], "server auth"),
        _ => (&["digital signature", "key encipherment", "client auth"], "client auth"),
    };
    if let Some(bad) = usages.iter().find(|u| !allowed.contains(u)) {
        return Err(SignError::Usage { signer: signer.into(), usage: (*bad).into() });
    }
    if !usages.contains(required) {
        return Err(SignError::MissingUsage { signer: signer.into(), usage: required });
    }
    if signer == KUBE_APISERVER_CLIENT {
        return Ok(());
    }
    if !request.is_node_subject() {
        return Err(SignError::Subject { signer: signer.into() });
    }
    let has_names = !request.dns_names.is_empty() || !request.ip_addresses.is_empty() || request.other_names > 0;
    match signer {
        KUBELET_SERVING if request.other_names > 0 || !has_names => Err(SignError::Names { signer: signer.into() }),
        KUBE_APISERVER_CLIENT_KUBELET if has_names => Err(SignError::NoNamesAllowed { signer: signer.into() }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{csr, request_pem};
    use super::super::{KUBE_APISERVER_CLIENT_KUBELET, KUBELET_SERVING, NODES_GROUP};
    use super::*;
    use k8s_openapi::api::certificates::v1::CertificateSigningRequestStatus;
    use rcgen::{BasicConstraints, CertificateParams, SanType};
    use x509_parser::prelude::{FromDer as _, X509Certificate};

    fn test_ca() -> (SigningCa, String) {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, "test-ca");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let ca = SigningCa { cert_pem: cert.pem(), key_pem: key.serialize_pem() };
        (ca, cert.pem())
    }

    fn approved(mut csr: CertificateSigningRequest) -> CertificateSigningRequest {
        csr.status = Some(CertificateSigningRequestStatus {
            conditions: Some(vec![CertificateSigningRequestCondition {
                type_: "Approved".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            certificate: None,
        });
        csr
    }

    fn parse_pem(pem: &str) -> Vec<u8> {
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap().1.contents
    }

    #[test]
    fn an_approved_node_client_request_is_issued_by_the_ca_with_its_subject_and_usages() {
        let (ca, ca_pem) = test_ca();
        let pem = request_pem("system:node:n1", Some(NODES_GROUP), vec![]);
        let mut req = approved(csr(
            KUBE_APISERVER_CLIENT_KUBELET,
            &pem,
            &["digital signature", "client auth"],
            "node-bootstrap",
            &[],
        ));
        req.spec.expiration_seconds = Some(3600);
        assert!(wants_signing(&req));
        let now = SystemTime::now();
        let issued = sign(&req, &issuer(&ca).unwrap(), now).unwrap();
        let der = parse_pem(&issued);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let ca_der = parse_pem(&ca_pem);
        let (_, ca_cert) = X509Certificate::from_der(&ca_der).unwrap();
        assert_eq!(cert.issuer(), ca_cert.subject());
        assert!(cert.verify_signature(Some(ca_cert.public_key())).is_ok());
        let cn: Vec<_> = cert.subject().iter_common_name().map(|a| a.as_str().unwrap().to_owned()).collect();
        let orgs: Vec<_> = cert.subject().iter_organization().map(|a| a.as_str().unwrap().to_owned()).collect();
        assert_eq!((cn, orgs), (vec!["system:node:n1".to_owned()], vec![NODES_GROUP.to_owned()]));
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        let lifetime = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert_eq!(lifetime as u64, 3600 + BACKDATE.as_secs());
    }

    #[test]
    fn a_serving_request_keeps_its_names_and_gets_server_auth() {
        let (ca, _) = test_ca();
        let sans = vec![SanType::DnsName("n1".try_into().unwrap()), SanType::IpAddress([127, 0, 0, 1].into())];
        let pem = request_pem("system:node:n1", Some(NODES_GROUP), sans);
        let req = approved(csr(KUBELET_SERVING, &pem, &["digital signature", "server auth"], "system:node:n1", &[]));
        let issued = sign(&req, &issuer(&ca).unwrap(), SystemTime::now()).unwrap();
        let der = parse_pem(&issued);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let names = cert.subject_alternative_name().unwrap().unwrap().value.general_names.len();
        assert_eq!(names, 2);
        assert!(cert.extended_key_usage().unwrap().unwrap().value.server_auth);
        let lifetime = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert_eq!(lifetime as u64, DEFAULT_DURATION.as_secs() + BACKDATE.as_secs());
    }

    #[test]
    fn requests_the_signer_does_not_allow_are_refused() {
        let (ca, _) = test_ca();
        let issuer = issuer(&ca).unwrap();
        let pem = request_pem("system:node:n1", Some(NODES_GROUP), vec![]);
        let server_usage = approved(csr(KUBE_APISERVER_CLIENT_KUBELET, &pem, &["server auth"], "u", &[]));
        assert!(matches!(sign(&server_usage, &issuer, SystemTime::now()), Err(SignError::Usage { .. })));
        let admin = request_pem("system:admin", Some("system:masters"), vec![]);
        let wrong_subject = approved(csr(KUBE_APISERVER_CLIENT_KUBELET, &admin, &["client auth"], "u", &[]));
        assert!(matches!(sign(&wrong_subject, &issuer, SystemTime::now()), Err(SignError::Subject { .. })));
        let no_names = approved(csr(KUBELET_SERVING, &pem, &["server auth"], "u", &[]));
        assert!(matches!(sign(&no_names, &issuer, SystemTime::now()), Err(SignError::Names { .. })));
        // Any subject is fine for plain API clients.
        let client = approved(csr(KUBE_APISERVER_CLIENT, &admin, &["client auth"], "u", &[]));
        assert!(sign(&client, &issuer, SystemTime::now()).is_ok());
    }

    #[test]
    fn only_approved_undecided_unissued_requests_of_known_signers_are_signed() {
        let pem = request_pem("system:node:n1", Some(NODES_GROUP), vec![]);
        let pending = csr(KUBE_APISERVER_CLIENT_KUBELET, &pem, &["client auth"], "u", &[]);
        assert!(!wants_signing(&pending));
        let mut denied = approved(pending.clone());
        denied.status.as_mut().unwrap().conditions.as_mut().unwrap().push(CertificateSigningRequestCondition {
            type_: "Denied".into(),
            status: "True".into(),
            ..Default::default()
        });
        assert!(!wants_signing(&denied));
        let mut issued = approved(pending.clone());
        issued.status.as_mut().unwrap().certificate = Some(k8s_openapi::ByteString(b"x".to_vec()));
        assert!(!wants_signing(&issued));
        let mut other = approved(pending);
        other.spec.signer_name = "example.com/x".into();
        assert!(!wants_signing(&other));
    }

    #[test]
    fn expiration_seconds_are_clamped_as_upstream() {
        assert_eq!(duration(None), DEFAULT_DURATION);
        assert_eq!(duration(Some(60)), MIN_DURATION);
        assert_eq!(duration(Some(i32::MAX)), DEFAULT_DURATION);
        assert_eq!(duration(Some(7200)), Duration::from_secs(7200));
    }
}
