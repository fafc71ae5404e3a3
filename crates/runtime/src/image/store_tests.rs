use super::*;
use crate::image::testing::TestImage;

fn store() -> (tempfile::TempDir, ImageStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path().join("images")).unwrap();
    (dir, store)
}

fn add(store: &ImageStore, image: &TestImage, name: &str) -> ImageRecord {
    for blob in image.blobs() {
        store.write_blob(Some(&Digest::of(blob)), blob).unwrap();
    }
    store.register(name, &image.manifest_digest(), &image.manifest_digest()).unwrap()
}

#[test]
fn a_blob_with_the_wrong_digest_is_refused_and_nothing_is_kept() {
    let (_dir, store) = store();
    let claimed = Digest::of(b"what the registry promised");
    let result = store.write_blob(Some(&claimed), &b"what it sent"[..]);
    assert!(matches!(result, Err(StoreError::DigestMismatch { .. })), "{result:?}");
    assert!(!store.has_blob(&claimed));
    assert!(!store.has_blob(&Digest::of(b"what it sent")));
    assert_eq!(fs::read_dir(store.root().join("tmp")).unwrap().count(), 0, "no temporary file left");
}

#[test]
fn registered_images_are_listed_with_config_and_unpacked_layers() {
    let (_dir, store) = store();
    let image = TestImage::new(&[("bin/hello", "hi")], &["sh"]);
    let record = add(&store, &image, "example.test/hello:1");
    assert_eq!(store.get("example.test/hello:1").unwrap(), Some(record.clone()));
    assert_eq!(store.list().unwrap().len(), 1);
    let layers = store.layer_paths(&record);
    assert_eq!(fs::read_to_string(layers[0].join("bin/hello")).unwrap(), "hi");
    let config = store.image_config(&record).unwrap();
    let config = config.config().as_ref().unwrap();
    assert_eq!(config.cmd().as_deref(), Some(&["sh".to_owned()][..]));
    assert_eq!(config.env().as_deref(), Some(&["PATH=/bin".to_owned()][..]));
    assert_eq!(config.working_dir().as_deref(), Some("/"));
    assert_eq!(config.user().as_deref(), Some("1000:1000"));
    assert_eq!(config.exposed_ports().as_deref(), Some(&["80/tcp".to_owned()][..]));
    assert_eq!(config.stop_signal().as_deref(), Some("SIGQUIT"));
}

#[test]
fn register_fails_when_a_layer_blob_is_missing() {
    let (_dir, store) = store();
    let image = TestImage::new(&[("a", "b")], &["sh"]);
    store.write_blob(None, &image.config[..]).unwrap();
    store.write_blob(None, &image.manifest[..]).unwrap();
    let result = store.register("x/y:z", &image.manifest_digest(), &image.manifest_digest());
    assert!(matches!(result, Err(StoreError::MissingBlob { .. })), "{result:?}");
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn gc_removes_only_what_no_image_references() {
    let (_dir, store) = store();
    let kept = TestImage::new(&[("kept", "1")], &["sh"]);
    let dropped = TestImage::new(&[("dropped", "2")], &["sh"]);
    let kept_record = add(&store, &kept, "example.test/kept:1");
    let dropped_record = add(&store, &dropped, "example.test/dropped:1");
    // A second name for the same image keeps it alive after the first goes.
    add(&store, &kept, "example.test/kept:alias");
    store.remove("example.test/kept:1").unwrap();
    store.remove("example.test/dropped:1").unwrap();
    let report = store.gc().unwrap();
    assert_eq!(report.blobs_removed, 3);
    assert_eq!(report.layers_removed, 1);
    assert!(report.bytes_freed > 0);
    assert!(store.has_blob(&kept_record.config));
    assert!(store.layer_paths(&kept_record)[0].is_dir());
    assert!(!store.has_blob(&dropped_record.config));
    assert!(!store.layer_paths(&dropped_record)[0].exists());
    assert!(matches!(store.remove("example.test/dropped:1"), Err(StoreError::NotFound { .. })));
}

#[test]
fn concurrent_registrations_of_different_names_all_land_in_the_index() {
    let (_dir, store) = store();
    let image = TestImage::new(&[("f", "x")], &["sh"]);
    for blob in image.blobs() {
        store.write_blob(None, blob).unwrap();
    }
    std::thread::scope(|scope| {
        for i in 0..8 {
            let store = store.clone();
            let digest = image.manifest_digest();
            scope.spawn(move || store.register(&format!("example.test/img:{i}"), &digest, &digest).unwrap());
        }
    });
    assert_eq!(store.list().unwrap().len(), 8);
}

#[test]
fn gc_waits_for_leases_in_flight() {
    let (_dir, store) = store();
    let lease = store.lease().unwrap();
    // Content written under the lease and not yet registered.
    let (digest, _) = store.write_blob(None, &b"pulled, not yet registered"[..]).unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let gc_store = store.clone();
    let gc = std::thread::spawn(move || {
        let report = gc_store.gc().unwrap();
        done_tx.send(()).unwrap();
        report
    });
    assert!(done_rx.recv_timeout(std::time::Duration::from_millis(300)).is_err(), "gc ran under a lease");
    assert!(store.has_blob(&digest));
    drop(lease);
    done_rx.recv_timeout(std::time::Duration::from_secs(10)).expect("gc finishes once the lease is gone");
    assert_eq!(gc.join().unwrap().blobs_removed, 1);
    assert!(!store.has_blob(&digest));
}
