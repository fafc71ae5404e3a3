use std::io::Read;

use super::*;

fn write(path: &Path, content: &str) {
    std::fs::write(path, content).unwrap();
}

fn names(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    out.sort();
    out
}

#[test]
fn excess_rotated_logs_go_oldest_first_and_older_ones_are_compressed() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("0.log");
    write(&log, "current\n");
    for stamp in ["20260101-000001", "20260101-000002", "20260101-000003", "20260101-000004"] {
        write(&dir.path().join(format!("0.log.{stamp}")), &format!("{stamp}\n"));
    }
    // Not ours: another container's log and a name that only looks like a rotation.
    write(&dir.path().join("1.log.20260101-000001"), "x");
    write(&dir.path().join("0.log.backup"), "x");
    prune_and_compress(&log, 5).unwrap();
    // Five files in all: the current one, the one about to be rotated, three rotated.
    assert_eq!(
        names(dir.path()),
        [
            "0.log",
            "0.log.20260101-000002.gz",
            "0.log.20260101-000003.gz",
            "0.log.20260101-000004.gz",
            "0.log.backup",
            "1.log.20260101-000001",
        ]
    );
    let mut text = String::new();
    let file = std::fs::File::open(dir.path().join("0.log.20260101-000004.gz")).unwrap();
    flate2::read::GzDecoder::new(file).read_to_string(&mut text).unwrap();
    assert_eq!(text, "20260101-000004\n");
}

#[test]
fn interrupted_compressions_are_cleaned_up() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("0.log");
    write(&log, "current\n");
    // A compression that finished but did not remove its source, and one that did not finish.
    write(&dir.path().join("0.log.20260101-000001"), "a\n");
    write(&dir.path().join("0.log.20260101-000001.gz"), "");
    write(&dir.path().join("0.log.20260101-000002.gz.tmp"), "");
    prune_and_compress(&log, 5).unwrap();
    assert_eq!(names(dir.path()), ["0.log", "0.log.20260101-000001.gz"]);
}

#[test]
fn with_two_files_no_rotated_file_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("0.log");
    write(&log, "current\n");
    write(&dir.path().join("0.log.20260101-000001"), "a\n");
    prune_and_compress(&log, 2).unwrap();
    assert_eq!(names(dir.path()), ["0.log"]);
}

#[test]
fn the_default_policy_matches_the_built_in_runtime() {
    let policy = LogRotatePolicy::default();
    assert_eq!((policy.max_size, policy.max_files), (10 << 20, 5));
}
