use super::*;
use std::net::Ipv6Addr;

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

const ALL_FILES: [&str; 8] =
    [CA_CERT, CA_KEY, SERVING_CERT, SERVING_KEY, ADMIN_CERT, ADMIN_KEY, KUBELET_CLIENT_CERT, KUBELET_CLIENT_KEY];

fn options() -> PkiOptions {
    PkiOptions::new(IpAddr::V4(Ipv4Addr::new(10, 43, 0, 1)), "cluster.local")
        .with_ip(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 10)))
        .with_ip(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
        .with_dns("node-a")
}

fn snapshot(dir: &Path) -> Vec<Vec<u8>> {
    ALL_FILES.iter().map(|name| fs::read(dir.join("tls").join(name)).unwrap()).collect()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn sans(pem: &str) -> (Vec<IpAddr>, Vec<String>) {
    let der = pem_to_der(Path::new("test"), pem.as_bytes()).unwrap();
    let cert = parse_der(Path::new("test"), &der).unwrap();
    let mut ips = Vec::new();
    let mut names = Vec::new();
    for name in &cert.subject_alternative_name().unwrap().unwrap().value.general_names {
        match name {
            GeneralName::DNSName(dns) => names.push(dns.to_string()),
            GeneralName::IPAddress(b) if b.len() == 4 => ips.push(IpAddr::from(<[u8; 4]>::try_from(*b).unwrap())),
            GeneralName::IPAddress(b) => ips.push(IpAddr::from(<[u8; 16]>::try_from(*b).unwrap())),
            _ => {}
        }
    }
    (ips, names)
}

#[test]
fn options_carry_the_kubernetes_service_names_and_skip_the_unspecified_address() {
    let opts = options();
    assert_eq!(
        opts.ip_sans,
        vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V4(Ipv4Addr::new(10, 43, 0, 1)),
            IpAddr::V4(Ipv4Addr::new(192, 168, 1, 10)),
        ]
    );
    assert_eq!(
        opts.dns_sans,
        [
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            "node-a",
        ]
    );
}

#[test]
fn first_start_creates_ca_and_certificates_with_private_keys_readable_only_by_owner() {
    let dir = tempfile::tempdir().unwrap();
    let pki = ClusterPki::load_or_create(dir.path(), &options()).unwrap();
    let tls = dir.path().join("tls");
    for name in ALL_FILES {
        assert!(tls.join(name).is_file(), "{name} missing");
    }
    for key in [CA_KEY, SERVING_KEY, ADMIN_KEY] {
        assert_eq!(mode(&tls.join(key)), 0o600, "{key}");
    }
    assert_eq!(pki.ca_pem(), fs::read_to_string(tls.join(CA_CERT)).unwrap());

    let ca_der = pem_to_der(&tls, pki.ca_pem().as_bytes()).unwrap();
    let ca = parse_der(&tls, &ca_der).unwrap();
    assert!(ca.is_ca());
    let ca_cn = ca.subject().iter_common_name().next().unwrap().as_str().unwrap();
    assert!(ca_cn.starts_with("tugboat-ca@"), "{ca_cn}");
    let ca_life = ca.validity().not_after.timestamp() - ca.validity().not_before.timestamp();
    assert!(ca_life >= (CA_VALIDITY.as_secs() as i64), "{ca_life}");

    let (ips, names) = sans(pki.serving_cert_pem());
    assert!(ips.contains(&IpAddr::V4(Ipv4Addr::new(10, 43, 0, 1))));
    assert!(ips.contains(&IpAddr::V4(Ipv4Addr::new(192, 168, 1, 10))));
    assert!(!ips.contains(&IpAddr::V4(Ipv4Addr::UNSPECIFIED)));
    assert!(names.iter().any(|n| n == "kubernetes.default.svc.cluster.local"));

    let admin_der = pem_to_der(&tls, pki.admin_cert_pem().as_bytes()).unwrap();
    let admin = parse_der(&tls, &admin_der).unwrap();
    assert!(admin.verify_signature(Some(ca.public_key())).is_ok());
    let admin_cn = admin.subject().iter_common_name().next().unwrap().as_str().unwrap();
    assert_eq!(admin_cn, ADMIN_USER);
    let admin_o = admin.subject().iter_organization().next().unwrap().as_str().unwrap();
    assert_eq!(admin_o, ADMIN_GROUP);
    let life = admin.validity().not_after.timestamp() - admin.validity().not_before.timestamp();
    assert!(life < 400 * DAY.as_secs() as i64, "{life}");
}

#[test]
fn second_start_reuses_the_ca_and_certificates_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let first = ClusterPki::load_or_create(dir.path(), &options()).unwrap();
    let before = snapshot(dir.path());
    let second = ClusterPki::load_or_create(dir.path(), &options()).unwrap();
    assert_eq!(snapshot(dir.path()), before);
    assert_eq!(first.ca_pem(), second.ca_pem());
    assert_eq!(first.admin_key_pem(), second.admin_key_pem());
}

#[test]
fn added_san_reissues_only_the_serving_certificate() {
    let dir = tempfile::tempdir().unwrap();
    ClusterPki::load_or_create(dir.path(), &options()).unwrap();
    let before = snapshot(dir.path());
    let new_ip = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 7));
    let pki = ClusterPki::load_or_create(dir.path(), &options().with_ip(new_ip)).unwrap();
    let after = snapshot(dir.path());
    for (i, name) in ALL_FILES.iter().enumerate() {
        let changed = before[i] != after[i];
        let serving = *name == SERVING_CERT || *name == SERVING_KEY;
        assert_eq!(changed, serving, "{name} changed: {changed}");
    }
    assert!(sans(pki.serving_cert_pem()).0.contains(&new_ip));
}

#[test]
fn serving_certificate_close_to_expiry_is_reissued() {
    let dir = tempfile::tempdir().unwrap();
    let pki = ClusterPki::load_or_create(dir.path(), &options()).unwrap();
    let tls = pki.tls_dir().to_owned();
    let mut params = leaf_params(SERVING_CN, &[], ExtendedKeyUsagePurpose::ServerAuth);
    params.subject_alt_names = vec![SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST))];
    set_validity(&mut params, 30 * DAY);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &pki.issuer).unwrap();
    write_leaf(&tls, SERVING_CERT, SERVING_KEY, cert.pem(), &key).unwrap();

    let opts = PkiOptions::default().with_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let renewed = ClusterPki::load_or_create(dir.path(), &opts).unwrap();
    assert_ne!(renewed.serving_cert_pem(), cert.pem());
    assert_eq!(renewed.ca_pem(), pki.ca_pem());
}

#[test]
fn serving_certificate_from_another_ca_is_reissued() {
    let dir = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    ClusterPki::load_or_create(dir.path(), &options()).unwrap();
    ClusterPki::load_or_create(other.path(), &options()).unwrap();
    let foreign = other.path().join("tls");
    let tls = dir.path().join("tls");
    for name in [SERVING_CERT, SERVING_KEY] {
        fs::copy(foreign.join(name), tls.join(name)).unwrap();
    }
    let pki = ClusterPki::load_or_create(dir.path(), &options()).unwrap();
    assert_ne!(pki.serving_cert_pem(), fs::read_to_string(foreign.join(SERVING_CERT)).unwrap());
}

#[test]
fn ca_certificate_without_its_key_is_an_error_not_a_new_ca() {
    let dir = tempfile::tempdir().unwrap();
    ClusterPki::load_or_create(dir.path(), &options()).unwrap();
    let tls = dir.path().join("tls");
    let ca_before = fs::read(tls.join(CA_CERT)).unwrap();
    fs::remove_file(tls.join(CA_KEY)).unwrap();
    let err = ClusterPki::load_or_create(dir.path(), &options()).unwrap_err();
    assert!(matches!(err, PkiError::CaKeyMissing { .. }), "{err:?}");
    assert_eq!(fs::read(tls.join(CA_CERT)).unwrap(), ca_before);
}

#[test]
fn unreadable_ca_key_is_reported_as_such() {
    let dir = tempfile::tempdir().unwrap();
    ClusterPki::load_or_create(dir.path(), &options()).unwrap();
    let key = dir.path().join("tls").join(CA_KEY);
    // A directory in place of the key cannot be read even by root, unlike a chmod 000 file.
    fs::remove_file(&key).unwrap();
    fs::create_dir(&key).unwrap();
    let err = ClusterPki::load_or_create(dir.path(), &options()).unwrap_err();
    assert!(matches!(err, PkiError::ReadCaKey { .. }), "{err:?}");
    assert!(err.to_string().starts_with("cannot read the ca key"), "{err}");
}

#[test]
fn ca_key_of_another_ca_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    ClusterPki::load_or_create(dir.path(), &options()).unwrap();
    ClusterPki::load_or_create(other.path(), &options()).unwrap();
    fs::copy(other.path().join("tls").join(CA_KEY), dir.path().join("tls").join(CA_KEY)).unwrap();
    let err = ClusterPki::load_or_create(dir.path(), &options()).unwrap_err();
    assert!(matches!(err, PkiError::CaKeyMismatch { .. }), "{err:?}");
}

#[test]
fn server_config_offers_h2_and_http11() {
    let dir = tempfile::tempdir().unwrap();
    let pki = ClusterPki::load_or_create(dir.path(), &options()).unwrap();
    let config = pki.server_config().unwrap();
    assert_eq!(config.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
}

#[test]
fn issued_client_certificate_is_signed_by_the_ca_and_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let pki = ClusterPki::load_or_create(dir.path(), &options()).unwrap();
    let before = snapshot(dir.path());
    let (cert_pem, key_pem) = pki.issue_client_cert("system:node:node-b", &["system:nodes"]).unwrap();
    assert_eq!(snapshot(dir.path()), before);
    let ca_der = pem_to_der(Path::new("ca"), pki.ca_pem().as_bytes()).unwrap();
    let ca = parse_der(Path::new("ca"), &ca_der).unwrap();
    let der = pem_to_der(Path::new("node"), cert_pem.as_bytes()).unwrap();
    let cert = parse_der(Path::new("node"), &der).unwrap();
    assert!(cert.verify_signature(Some(ca.public_key())).is_ok());
    let key = KeyPair::from_pem(&key_pem).unwrap();
    assert_eq!(cert.public_key().raw, key.subject_public_key_info().as_slice());
}

#[test]
fn client_certificate_with_two_organizations_is_refused_rather_than_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let pki = ClusterPki::load_or_create(dir.path(), &options()).unwrap();
    let err = pki.issue_client_cert("bob", &["devs", "ops"]).unwrap_err();
    assert!(matches!(err, PkiError::TooManyOrganizations { count: 2, .. }), "{err:?}");
}

#[test]
fn admin_kubeconfig_embeds_ca_and_client_credentials_with_mode_0600() {
    let dir = tempfile::tempdir().unwrap();
    let pki = ClusterPki::load_or_create(dir.path(), &options()).unwrap();
    let path = dir.path().join("cred").join("admin.kubeconfig");
    pki.write_admin_kubeconfig(&path, "https://127.0.0.1:6443").unwrap();
    assert_eq!(mode(&path), 0o600);

    let config: serde_json::Value = serde_yaml::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    let decode = |v: &serde_json::Value| {
        let b = base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap()).unwrap();
        String::from_utf8(b).unwrap()
    };
    assert_eq!(config["current-context"], "default");
    assert_eq!(config["contexts"][0]["context"]["cluster"], "default");
    assert_eq!(config["contexts"][0]["context"]["user"], "default");
    let cluster = &config["clusters"][0];
    assert_eq!(cluster["name"], "default");
    assert_eq!(cluster["cluster"]["server"], "https://127.0.0.1:6443");
    assert_eq!(decode(&cluster["cluster"]["certificate-authority-data"]), pki.ca_pem());
    let user = &config["users"][0]["user"];
    assert_eq!(decode(&user["client-certificate-data"]), pki.admin_cert_pem());
    assert_eq!(decode(&user["client-key-data"]), pki.admin_key_pem());
}

#[test]
fn debug_output_holds_no_key_material() {
    let dir = tempfile::tempdir().unwrap();
    let pki = ClusterPki::load_or_create(dir.path(), &options()).unwrap();
    let shown = format!("{pki:?}");
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
}

#[test]
fn cluster_pki_can_be_shared_between_tasks() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ClusterPki>();
}

#[test]
fn kubelet_client_certificate_is_a_master_kept_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let first = ClusterPki::load_or_create(dir.path(), &options()).unwrap();
    let tls = dir.path().join("tls");
    assert_eq!(mode(&tls.join(KUBELET_CLIENT_KEY)), 0o600);
    let der = pem_to_der(&tls, &fs::read(tls.join(KUBELET_CLIENT_CERT)).unwrap()).unwrap();
    let cert = parse_der(&tls, &der).unwrap();
    assert_eq!(cert.subject().iter_common_name().next().unwrap().as_str().unwrap(), KUBELET_CLIENT_USER);
    assert_eq!(cert.subject().iter_organization().next().unwrap().as_str().unwrap(), ADMIN_GROUP);
    let before = fs::read(tls.join(KUBELET_CLIENT_CERT)).unwrap();
    let second = ClusterPki::load_or_create(dir.path(), &options()).unwrap();
    assert_eq!(fs::read(tls.join(KUBELET_CLIENT_CERT)).unwrap(), before);
    assert_eq!(first.kubelet_client.key_pem, second.kubelet_client.key_pem);
    let config = second.kubelet_client_config().unwrap();
    assert!(config.client_auth_cert_resolver.has_certs());
    assert_eq!(config.alpn_protocols, [b"http/1.1".to_vec()]);
}

#[test]
fn kubelet_serving_certificate_names_the_node_and_its_addresses_and_chains_to_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = ClusterPki::load_or_create(dir.path(), &options()).unwrap();
    let ip = IpAddr::V4(Ipv4Addr::new(192, 168, 1, 20));
    let (chain, key_pem) = pki.issue_kubelet_serving_cert("node-b", &[ip]).unwrap();
    let (ips, names) = sans(&chain);
    assert_eq!((ips, names), (vec![ip], vec!["node-b".to_string()]));
    assert!(chain.ends_with(pki.ca_pem()), "the chain ends with the ca");
    let der = pem_to_der(Path::new("node"), chain.as_bytes()).unwrap();
    let cert = parse_der(Path::new("node"), &der).unwrap();
    assert_eq!(cert.subject().iter_common_name().next().unwrap().as_str().unwrap(), "system:node:node-b");
    let ca_der = pem_to_der(Path::new("ca"), pki.ca_pem().as_bytes()).unwrap();
    assert!(cert.verify_signature(Some(parse_der(Path::new("ca"), &ca_der).unwrap().public_key())).is_ok());
    let key = KeyPair::from_pem(&key_pem).unwrap();
    assert_eq!(cert.public_key().raw, key.subject_public_key_info().as_slice());
    let usage = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(usage.server_auth && !usage.client_auth);
}
