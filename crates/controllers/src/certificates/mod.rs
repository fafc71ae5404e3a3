//! The certificates controllers (upstream's `pkg/controller/certificates`): the approver that
//! auto-approves node agents' certificate requests (kubelet TLS bootstrapping) and the signer
//! that issues approved requests of the built-in signers with the cluster CA.
//!
//! Both read the PKCS#10 request themselves: what a CSR object's spec says about the requester
//! (`spec.username`, `spec.groups`) is set by the API server from the authenticated user, but
//! the subject and names are only in the signed request.

pub mod csrapproving;
pub mod csrsigning;

use std::collections::BTreeSet;
use std::net::IpAddr;

use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer as _;

/// The signer of node agents' client certificates.
pub const KUBE_APISERVER_CLIENT_KUBELET: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// The signer of node agents' serving certificates.
pub const KUBELET_SERVING: &str = "kubernetes.io/kubelet-serving";
/// The signer of other API clients' certificates.
pub const KUBE_APISERVER_CLIENT: &str = "kubernetes.io/kube-apiserver-client";

/// The group every node agent's identity is in.
pub const NODES_GROUP: &str = "system:nodes";
/// The prefix of a node agent's user name.
pub const NODE_USER_PREFIX: &str = "system:node:";

/// The CA the signer issues certificates with (`--cluster-signing-cert-file`,
/// `--cluster-signing-key-file`).
#[derive(Clone)]
pub struct SigningCa {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for SigningCa {
    // The key stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningCa").finish_non_exhaustive()
    }
}

/// Why a request's PKCS#10 data could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("spec.request is not a PEM-encoded certificate request")]
    Pem,
    #[error("spec.request is not a valid PKCS#10 certificate request")]
    Der,
    #[error("the certificate request's signature does not verify")]
    Signature,
}

/// What a PKCS#10 request asks for, as far as the approver and signer care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedRequest {
    pub common_names: Vec<String>,
    pub organizations: Vec<String>,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    /// Emails, URIs and other names: none of the node signers allow them.
    pub other_names: usize,
}

impl ParsedRequest {
    /// The single common name, if there is exactly one.
    pub fn common_name(&self) -> Option<&str> {
        match self.common_names.as_slice() {
            [cn] => Some(cn),
            _ => None,
        }
    }

    /// Whether the subject is exactly `system:node:<name>` in group `system:nodes`.
    pub fn is_node_subject(&self) -> bool {
        self.organizations == [NODES_GROUP]
            && self.common_name().is_some_and(|cn| cn.strip_prefix(NODE_USER_PREFIX).is_some_and(|n| !n.is_empty()))
    }
}

/// Reads and verifies the PEM request of a CSR object's `spec.request`.
pub fn parse_request(pem_bytes: &[u8]) -> Result<ParsedRequest, ParseError> {
    let text = std::str::from_utf8(pem_bytes).map_err(|_| ParseError::Pem)?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(text.trim_start().as_bytes()).map_err(|_| ParseError::Pem)?;
    if pem.label != "CERTIFICATE REQUEST" {
        return Err(ParseError::Pem);
    }
    let (_, csr) = X509CertificationRequest::from_der(&pem.contents).map_err(|_| ParseError::Der)?;
    csr.verify_signature().map_err(|_| ParseError::Signature)?;
    let subject = &csr.certification_request_info.subject;
    let text_of = |attr: &x509_parser::x509::AttributeTypeAndValue<'_>| attr.as_str().map(str::to_owned);
    let common_names =
        subject.iter_common_name().map(text_of).collect::<Result<_, _>>().map_err(|_| ParseError::Der)?;
    let organizations =
        subject.iter_organization().map(text_of).collect::<Result<_, _>>().map_err(|_| ParseError::Der)?;
    let mut parsed =
        ParsedRequest { common_names, organizations, dns_names: vec![], ip_addresses: vec![], other_names: 0 };
    for ext in csr.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            for name in &san.general_names {
                match name {
                    GeneralName::DNSName(dns) => parsed.dns_names.push((*dns).to_owned()),
                    GeneralName::IPAddress(bytes) => match ip_from_bytes(bytes) {
                        Some(ip) => parsed.ip_addresses.push(ip),
                        None => parsed.other_names += 1,
                    },
                    _ => parsed.other_names += 1,
                }
            }
        }
    }
    Ok(parsed)
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

/// The usages of a request as a set (spec.usages).
pub(crate) fn usages(csr: &CertificateSigningRequest) -> BTreeSet<&str> {
    csr.spec.usages.iter().flatten().map(String::as_str).collect()
}

/// Whether the request carries a condition of `type_` with status True.
pub(crate) fn has_condition(csr: &CertificateSigningRequest, type_: &str) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == type_ && c.status == "True")
}

#[cfg(test)]
pub(crate) mod testing {
    use k8s_openapi::ByteString;
    use k8s_openapi::api::certificates::v1::{CertificateSigningRequest, CertificateSigningRequestSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    /// A PEM request for `cn` in organization `org` with `sans`.
    pub fn request_pem(cn: &str, org: Option<&str>, sans: Vec<SanType>) -> String {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        if let Some(org) = org {
            params.distinguished_name.push(DnType::OrganizationName, org);
        }
        params.subject_alt_names = sans;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    pub fn csr(signer: &str, request: &str, usages: &[&str], user: &str, groups: &[&str]) -> CertificateSigningRequest {
        CertificateSigningRequest {
            metadata: ObjectMeta { name: Some("node-csr-test".into()), ..Default::default() },
            spec: CertificateSigningRequestSpec {
                signer_name: signer.into(),
                request: ByteString(request.as_bytes().to_vec()),
                usages: Some(usages.iter().map(|u| (*u).to_owned()).collect()),
                username: Some(user.into()),
                groups: Some(groups.iter().map(|g| (*g).to_owned()).collect()),
                ..Default::default()
            },
            status: None,
        }
    }
}
