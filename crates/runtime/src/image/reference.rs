//! Image references, normalised as Docker and containerd do (`busybox` is
//! `docker.io/library/busybox:latest`), and the loopback rule for plain-HTTP registries.

use std::net::IpAddr;

pub use oci_spec::distribution::Reference;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("invalid image reference {reference:?}")]
    Invalid {
        reference: String,
        #[source]
        source: oci_spec::distribution::ParseError,
    },
    #[error("invalid image reference {reference:?}: repository names must be lower-case")]
    UpperCase { reference: String },
}

/// Parses and normalises an image reference. As containerd's `ParseDockerRef` does, a reference
/// with both a tag and a digest keeps only the digest: the digest is what gets pulled.
pub fn parse(reference: &str) -> Result<Reference, ReferenceError> {
    let parsed = Reference::try_from(reference)
        .map_err(|source| ReferenceError::Invalid { reference: reference.to_owned(), source })?;
    if parsed.repository().bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ReferenceError::UpperCase { reference: reference.to_owned() });
    }
    Ok(match parsed.digest() {
        Some(digest) if parsed.tag().is_some() => {
            Reference::with_digest(parsed.registry().to_owned(), parsed.repository().to_owned(), digest.to_owned())
        }
        _ => parsed,
    })
}

/// The fully qualified name the store records an image under, e.g.
/// `docker.io/library/busybox:latest` or `127.0.0.1:5000/busybox@sha256:...`.
pub fn normalized_name(reference: &Reference) -> String {
    reference.whole()
}

/// The same repository, pinned to `digest` (what `repoDigests` lists).
pub fn repo_digest(reference: &Reference, digest: &str) -> String {
    format!("{}/{}@{}", reference.registry(), reference.repository(), digest)
}

/// Whether a registry host (`host`, `host:port`, `[v6]:port`) is on a loopback address, where
/// plain HTTP is allowed as Docker allows it for `localhost` and 127.0.0.0/8. Names other than
/// `localhost` are not resolved: a DNS answer must not turn TLS off.
pub fn is_loopback_registry(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        match registry.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => registry,
        }
    };
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";

    #[test]
    fn short_names_normalise_to_docker_hub_library() {
        assert_eq!(normalized_name(&parse("busybox").unwrap()), "docker.io/library/busybox:latest");
        assert_eq!(normalized_name(&parse("busybox:1.36").unwrap()), "docker.io/library/busybox:1.36");
        assert_eq!(normalized_name(&parse("user/app").unwrap()), "docker.io/user/app:latest");
        assert_eq!(normalized_name(&parse("index.docker.io/user/app").unwrap()), "docker.io/user/app:latest");
    }

    #[test]
    fn registries_with_ports_and_digests_are_kept() {
        let r = parse("127.0.0.1:5000/tugboat.test/busybox:1").unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "tugboat.test/busybox");
        assert_eq!(r.tag(), Some("1"));
        let r = parse(&format!("localhost:5000/busybox@{DIGEST}")).unwrap();
        assert_eq!(r.digest(), Some(DIGEST));
        assert_eq!(normalized_name(&r), format!("localhost:5000/busybox@{DIGEST}"));
    }

    #[test]
    fn tag_and_digest_keeps_the_digest_only() {
        let r = parse(&format!("busybox:1.36@{DIGEST}")).unwrap();
        assert_eq!(r.tag(), None);
        assert_eq!(normalized_name(&r), format!("docker.io/library/busybox@{DIGEST}"));
    }

    #[test]
    fn invalid_references_are_refused() {
        for bad in ["", "Busybox", "busy box", "busybox@sha256:abc", "a/../b", "busybox:"] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn only_loopback_hosts_allow_plain_http() {
        for host in ["127.0.0.1:5000", "127.1.2.3", "localhost:5000", "[::1]:5000", "LOCALHOST"] {
            assert!(is_loopback_registry(host), "{host}");
        }
        for host in ["docker.io", "10.0.0.1:5000", "example.com:5000", "localhost.example.com", "[::2]:1"] {
            assert!(!is_loopback_registry(host), "{host}");
        }
    }
}
