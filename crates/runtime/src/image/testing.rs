//! Builders for small images, shared by the tests of the store, import and pull modules.

use super::digest::Digest;
use super::media_type;

/// A one-layer image: its layer tar, config JSON and manifest JSON, with their digests.
pub struct TestImage {
    pub layer: Vec<u8>,
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
}

impl TestImage {
    /// An image whose single layer holds `files` (path, content); the layer is gzip-compressed.
    pub fn new(files: &[(&str, &str)], cmd: &[&str]) -> Self {
        use std::io::Write;
        let mut builder = tar::Builder::new(Vec::new());
        for (path, content) in files {
            let mut header = tar::Header::new_ustar();
            header.set_size(content.len() as u64);
            header.set_mode(0o644);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(1);
            header.set_cksum();
            builder.append_data(&mut header, path, content.as_bytes()).unwrap();
        }
        let tar = builder.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let layer = gz.finish().unwrap();
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": cmd, "Env": ["PATH=/bin"], "WorkingDir": "/", "User": "1000:1000",
                       "ExposedPorts": {"80/tcp": {}}, "StopSignal": "SIGQUIT"},
            "rootfs": {"type": "layers", "diff_ids": [Digest::of(&tar).to_string()]},
        }))
        .unwrap();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_MANIFEST,
            "config": {"mediaType": media_type::OCI_CONFIG, "digest": Digest::of(&config).to_string(),
                       "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": Digest::of(&layer).to_string(), "size": layer.len()}],
        }))
        .unwrap();
        TestImage { layer, config, manifest }
    }

    pub fn manifest_digest(&self) -> Digest {
        Digest::of(&self.manifest)
    }

    pub fn blobs(&self) -> [&[u8]; 3] {
        [&self.layer, &self.config, &self.manifest]
    }
}
