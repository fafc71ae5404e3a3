use super::*;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

const T1: &str = "2026-01-01T00:00:01.000000001Z";
const T2: &str = "2026-01-01T00:00:02.5Z";
const T3: &str = "2026-01-01T00:00:03Z";

fn sample() -> String {
    format!(
        "{T1} stdout F one\n{T1} stderr F err one\n{T2} stdout P tw\n{T2} stdout P o-\n{T2} stderr F err two\n\
         {T2} stdout F joined\n{T3} stdout F three\n"
    )
}

fn write_file(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("0.log");
    std::fs::write(&path, text).unwrap();
    path
}

fn not_running() -> RunningCheck {
    Arc::new(|| Box::pin(async { false }))
}

async fn read(path: &Path, options: LogOptions) -> String {
    let (tx, mut rx) = mpsc::channel(16);
    let task = tokio::spawn(stream_log(path.to_path_buf(), options, not_running(), tx));
    let mut out = Vec::new();
    while let Some(chunk) = rx.recv().await {
        out.extend_from_slice(&chunk);
    }
    task.await.unwrap().unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn records_parse_with_stream_and_partial_tag() {
    let r = parse_record(b"2016-10-06T00:17:09.669794202Z stdout F hello world").unwrap();
    assert_eq!(r.time, ts("2016-10-06T00:17:09.669794202Z"));
    assert_eq!((r.stream, r.partial, r.content.as_slice()), (Stream::Stdout, false, &b"hello world"[..]));
    let r = parse_record(b"2016-10-06T00:17:09Z stderr P part").unwrap();
    assert_eq!((r.stream, r.partial), (Stream::Stderr, true));
    let r = parse_record(b"2016-10-06T00:17:09Z stdout F").unwrap();
    assert!(r.content.is_empty());
    let r = parse_record(b"2016-10-06T00:17:09Z stdout F:x  two  spaces ").unwrap();
    assert_eq!(r.content, b" two  spaces ");
    assert!(parse_record(b"not a record").is_err());
    assert!(parse_record(b"2016-10-06T00:17:09Z stdin F x").is_err());
    assert!(parse_record(b"2016-10-06T00:17:09Z stdout X x").is_err());
}

#[test]
fn options_come_from_the_query() {
    let now = ts("2026-01-01T01:00:00Z");
    let o = LogOptions::from_query(Some("follow=true&tailLines=10&timestamps=1&limitBytes=5"), now).unwrap();
    assert!(o.follow && o.timestamps && !o.previous);
    assert_eq!((o.tail_lines, o.limit_bytes), (Some(10), Some(5)));
    let o = LogOptions::from_query(Some("sinceSeconds=60&previous=true"), now).unwrap();
    assert_eq!(o.since, Some(ts("2026-01-01T00:59:00Z")));
    assert!(o.previous);
    let o = LogOptions::from_query(Some("sinceTime=2026-01-01T00%3A30%3A00Z"), now).unwrap();
    assert_eq!(o.since, Some(ts("2026-01-01T00:30:00Z")));
    let o = LogOptions::from_query(Some("tail=all&stream=Stderr"), now).unwrap();
    assert_eq!((o.tail_lines, o.stream), (None, LogStream::Stderr));
    assert_eq!(LogOptions::from_query(None, now).unwrap(), LogOptions::default());

    let invalid = |q: &str| matches!(LogOptions::from_query(Some(q), now), Err(LogOptionsError::Invalid(_)));
    assert!(invalid("tailLines=-1"));
    assert!(invalid("limitBytes=0"));
    assert!(invalid("sinceSeconds=0"));
    assert!(invalid("sinceSeconds=5&sinceTime=2026-01-01T00:00:00Z"));
    assert!(invalid("stream=Nope"));
    assert!(invalid("stream=Stdout&tailLines=1"));
    let decode = |q: &str| matches!(LogOptions::from_query(Some(q), now), Err(LogOptionsError::Decode { .. }));
    assert!(decode("follow=maybe"));
    assert!(decode("tailLines=ten"));
    assert!(decode("sinceTime=yesterday"));
}

#[tokio::test]
async fn a_log_reads_both_streams_with_partials_joined() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), &sample());
    let out = read(&path, LogOptions::default()).await;
    assert_eq!(out, "one\nerr one\nerr two\ntwo-joined\nthree\n");
}

#[tokio::test]
async fn timestamps_prefix_each_line_with_its_first_record_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), &sample());
    let out = read(&path, LogOptions { timestamps: true, ..Default::default() }).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "2026-01-01T00:00:01.000000001Z one");
    assert_eq!(lines[3], "2026-01-01T00:00:02.5Z two-joined");
    assert_eq!(lines[4], "2026-01-01T00:00:03Z three");
}

#[tokio::test]
async fn tail_keeps_the_last_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), &sample());
    assert_eq!(read(&path, LogOptions { tail_lines: Some(2), ..Default::default() }).await, "two-joined\nthree\n");
    assert_eq!(read(&path, LogOptions { tail_lines: Some(0), ..Default::default() }).await, "");
    assert_eq!(read(&path, LogOptions { tail_lines: Some(99), ..Default::default() }).await.lines().count(), 5);
}

#[tokio::test]
async fn since_drops_older_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), &sample());
    let out = read(&path, LogOptions { since: Some(ts("2026-01-01T00:00:02Z")), ..Default::default() }).await;
    assert_eq!(out, "err two\ntwo-joined\nthree\n");
}

#[tokio::test]
async fn limit_bytes_cuts_the_output_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), &sample());
    assert_eq!(read(&path, LogOptions { limit_bytes: Some(6), ..Default::default() }).await, "one\ner");
    let out = read(&path, LogOptions { limit_bytes: Some(4), timestamps: true, ..Default::default() }).await;
    assert_eq!(out, "2026");
}

#[tokio::test]
async fn a_stream_can_be_chosen() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), &sample());
    assert_eq!(read(&path, LogOptions { stream: LogStream::Stderr, ..Default::default() }).await, "err one\nerr two\n");
}

fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new().append(true).create(true).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

async fn next_text(rx: &mut mpsc::Receiver<Bytes>) -> String {
    let chunk = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("no output in time");
    String::from_utf8(chunk.expect("stream ended").to_vec()).unwrap()
}

#[tokio::test]
async fn follow_streams_appended_lines_until_the_container_stops() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), &format!("{T1} stdout F first\n"));
    let running = Arc::new(AtomicBool::new(true));
    let check: RunningCheck = {
        let running = running.clone();
        Arc::new(move || {
            let r = running.load(Ordering::SeqCst);
            Box::pin(async move { r })
        })
    };
    let (tx, mut rx) = mpsc::channel(16);
    let options = LogOptions { follow: true, tail_lines: Some(1), ..Default::default() };
    let task = tokio::spawn(stream_log(path.clone(), options, check, tx));
    assert_eq!(next_text(&mut rx).await, "first\n");
    // A record written in two pieces arrives once complete.
    append(&path, &format!("{T2} stdout F sec"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    append(&path, "ond\n");
    assert_eq!(next_text(&mut rx).await, "second\n");
    running.store(false, Ordering::SeqCst);
    append(&path, &format!("{T3} stderr F last words\n"));
    let mut rest = String::new();
    while let Ok(Some(chunk)) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
        rest.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert_eq!(rest, "last words\n");
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("follow did not end").unwrap().unwrap();
}

#[tokio::test]
async fn follow_goes_on_into_a_rotated_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), &format!("{T1} stdout F before\n"));
    let check: RunningCheck = Arc::new(|| Box::pin(async { true }));
    let (tx, mut rx) = mpsc::channel(16);
    let task = tokio::spawn(stream_log(path.clone(), LogOptions { follow: true, ..Default::default() }, check, tx));
    assert_eq!(next_text(&mut rx).await, "before\n");
    // The runtime's rotation: the last record into the old file, rename, a new file.
    append(&path, &format!("{T2} stdout F old tail\n"));
    std::fs::rename(&path, dir.path().join("0.log.20260101-000002")).unwrap();
    append(&path, &format!("{T3} stdout F after\n"));
    let mut seen = String::new();
    while !seen.contains("after") {
        seen.push_str(&next_text(&mut rx).await);
    }
    assert_eq!(seen, "old tail\nafter\n");
    drop(rx);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("follow did not notice the client left")
        .unwrap()
        .unwrap();
}

#[test]
fn the_newest_pod_directory_and_highest_attempts_are_found() {
    let root = tempfile::tempdir().unwrap();
    let old = root.path().join("ns_web_uid-old");
    std::fs::create_dir_all(old.join("c")).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let new = root.path().join("ns_web_uid-new");
    std::fs::create_dir_all(new.join("c")).unwrap();
    std::fs::create_dir_all(root.path().join("ns_web-2_uid-x")).unwrap();
    for f in ["0.log", "1.log", "2.log", "2.log.20260101-000000", "notes.txt"] {
        std::fs::write(new.join("c").join(f), "").unwrap();
    }
    let logs = find_container_logs(root.path(), "ns", "web", "c", None).unwrap();
    assert_eq!(logs.pod_uid, "uid-new");
    assert_eq!(logs.attempts, [0, 1, 2]);
    assert_eq!(logs.current("c").unwrap(), (2, new.join("c/2.log")));
    assert_eq!(logs.previous("c").unwrap(), (1, new.join("c/1.log")));
    let logs = find_container_logs(root.path(), "ns", "web", "c", Some("uid-old")).unwrap();
    assert_eq!(logs.pod_uid, "uid-old");
    assert!(logs.current("c").is_none());
    assert!(find_container_logs(root.path(), "ns", "nope", "c", None).is_none());
    assert!(find_container_logs(root.path(), "other", "web", "c", None).is_none());
}

#[tokio::test]
async fn following_an_exited_container_answers_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), &sample());
    let started = std::time::Instant::now();
    let out = read(&path, LogOptions { follow: true, tail_lines: Some(1), ..Default::default() }).await;
    assert_eq!(out, "three\n");
    assert!(started.elapsed() < FOLLOW_POLL, "took {:?}", started.elapsed());
}
