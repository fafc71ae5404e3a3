use super::*;
use serde_json::json;

const MI: u64 = 1 << 20;

fn threshold(signal: Signal, value: Threshold, grace_secs: u64) -> EvictionThreshold {
    EvictionThreshold { signal, value, grace_period: Duration::from_secs(grace_secs), min_reclaim: None }
}

fn observed(signal: Signal, available: u64, capacity: u64) -> Observations {
    Observations::from([(signal, Observation { available, capacity })])
}

/// A pod with one container `app` requesting `requests` (resource name -> quantity).
fn pod(name: &str, priority: i32, requests: serde_json::Value) -> Arc<Pod> {
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "uid": name},
            "spec": {
                "priority": priority,
                "containers": [{"name": "app", "image": "i", "resources": {"requests": requests}}],
            }
        }))
        .unwrap(),
    )
}

fn names(pods: &[Arc<Pod>]) -> Vec<&str> {
    pods.iter().map(|p| p.metadata.name.as_deref().unwrap()).collect()
}

fn memory_stats(usage: u64) -> PodStats {
    PodStats {
        memory_working_set: Some(usage),
        containers: vec![ContainerStats { name: "app".into(), memory_working_set: Some(usage), ..Default::default() }],
        ..Default::default()
    }
}

#[test]
fn memory_ranking_puts_pods_over_their_requests_first_then_low_priority_then_the_biggest_excess() {
    let mut pods = vec![
        pod("guaranteed-under-request", 0, json!({"memory": "100Mi"})),
        pod("burstable-over-high-priority", 1000, json!({"memory": "100Mi"})),
        pod("best-effort-small", 0, json!({})),
        pod("best-effort-big", 0, json!({})),
        pod("burstable-over-by-little", 0, json!({"memory": "290Mi"})),
        pod("no-stats", 2000, json!({})),
    ];
    let stats = StatsByUid::from([
        ("guaranteed-under-request".to_owned(), memory_stats(50 * MI)),
        ("burstable-over-high-priority".to_owned(), memory_stats(500 * MI)),
        ("best-effort-small".to_owned(), memory_stats(10 * MI)),
        ("best-effort-big".to_owned(), memory_stats(300 * MI)),
        ("burstable-over-by-little".to_owned(), memory_stats(300 * MI)),
    ]);
    rank(Signal::MemoryAvailable, false, &mut pods, &stats);
    assert_eq!(
        names(&pods),
        [
            "no-stats",
            "best-effort-big",
            "best-effort-small",
            "burstable-over-by-little",
            "burstable-over-high-priority",
            "guaranteed-under-request",
        ]
    );
}

fn disk_stats(rootfs: u64, logs: u64, volume: u64) -> PodStats {
    PodStats {
        containers: vec![ContainerStats {
            name: "app".into(),
            memory_working_set: None,
            rootfs: Some(FsUsage { bytes: rootfs, inodes: 1 }),
            logs: Some(FsUsage { bytes: logs, inodes: 1 }),
        }],
        // A volume written to holds a hundred files, an unused one only itself.
        volumes: vec![("scratch".into(), FsUsage { bytes: volume, inodes: if volume > 0 { 100 } else { 1 } })],
        ..Default::default()
    }
}

#[test]
fn disk_ranking_counts_writable_layers_logs_and_empty_dirs_against_storage_requests() {
    let mut pods = vec![
        pod("requests-plenty", 0, json!({"ephemeral-storage": "1Gi"})),
        pod("writes-to-empty-dir", 0, json!({})),
        pod("writes-to-rootfs", 0, json!({})),
        pod("low-priority-small", -10, json!({})),
    ];
    let stats = StatsByUid::from([
        ("requests-plenty".to_owned(), disk_stats(100 * MI, MI, 100 * MI)),
        ("writes-to-empty-dir".to_owned(), disk_stats(0, 0, 80 * MI)),
        ("writes-to-rootfs".to_owned(), disk_stats(40 * MI, 0, 0)),
        ("low-priority-small".to_owned(), disk_stats(MI, 0, 0)),
    ]);
    rank(Signal::NodeFsAvailable, false, &mut pods, &stats);
    assert_eq!(names(&pods), ["low-priority-small", "writes-to-empty-dir", "writes-to-rootfs", "requests-plenty"]);

    // With images on their own filesystem, the node's counts logs and volumes only, the
    // image filesystem's the writable layers only.
    let mut pods = vec![pod("writes-to-rootfs", 0, json!({})), pod("writes-to-empty-dir", 0, json!({}))];
    rank(Signal::NodeFsAvailable, true, &mut pods, &stats);
    assert_eq!(names(&pods), ["writes-to-empty-dir", "writes-to-rootfs"]);
    rank(Signal::ImageFsAvailable, true, &mut pods, &stats);
    assert_eq!(names(&pods), ["writes-to-rootfs", "writes-to-empty-dir"]);
    // Inodes: the emptyDir's 100 files outweigh the writable layer's one.
    rank(Signal::NodeFsInodesFree, false, &mut pods, &stats);
    assert_eq!(names(&pods), ["writes-to-empty-dir", "writes-to-rootfs"]);
}

#[test]
fn pid_ranking_is_by_priority_then_process_count() {
    let mut pods = vec![pod("many-high", 100, json!({})), pod("few", 0, json!({})), pod("many", 0, json!({}))];
    let processes = |n| PodStats { processes: Some(n), ..Default::default() };
    let stats = StatsByUid::from([
        ("many-high".to_owned(), processes(500)),
        ("few".to_owned(), processes(3)),
        ("many".to_owned(), processes(400)),
    ]);
    rank(Signal::PidAvailable, false, &mut pods, &stats);
    assert_eq!(names(&pods), ["many", "few", "many-high"]);
}

#[test]
fn a_hard_threshold_counts_at_once_and_its_condition_outlasts_it_by_the_transition_period() {
    let thresholds = [threshold(Signal::NodeFsAvailable, Threshold::Bytes(100 * MI), 0)];
    let transition = Duration::from_secs(300);
    let t0 = Instant::now();
    let mut state = State::default();
    let low = observed(Signal::NodeFsAvailable, 50 * MI, 1000 * MI);
    let fine = observed(Signal::NodeFsAvailable, 500 * MI, 1000 * MI);

    let synced = state.synchronize(&thresholds, &fine, transition, t0);
    assert_eq!(
        synced,
        Synchronized { pressure: Pressure { memory: false, disk: false, pid: false }, thresholds_met: vec![] }
    );
    let synced = state.synchronize(&thresholds, &low, transition, t0 + Duration::from_secs(10));
    assert!(synced.pressure.disk && !synced.pressure.memory);
    assert_eq!(synced.thresholds_met, [0]);
    // Relieved at 20 s: nothing to reclaim, but the condition stays until 5 minutes after the
    // last time it was seen (10 s), so that it does not flap.
    let synced = state.synchronize(&thresholds, &fine, transition, t0 + Duration::from_secs(20));
    assert!(synced.pressure.disk);
    assert!(synced.thresholds_met.is_empty());
    let synced = state.synchronize(&thresholds, &fine, transition, t0 + Duration::from_secs(309));
    assert!(synced.pressure.disk, "still within the transition period");
    let synced = state.synchronize(&thresholds, &fine, transition, t0 + Duration::from_secs(310));
    assert!(!synced.pressure.disk, "the transition period passed");
}

#[test]
fn a_soft_threshold_sets_the_condition_at_once_but_drives_eviction_only_after_its_grace_period() {
    let thresholds = [
        threshold(Signal::NodeFsAvailable, Threshold::Bytes(10 * MI), 0),
        threshold(Signal::MemoryAvailable, Threshold::Bytes(200 * MI), 60),
    ];
    let t0 = Instant::now();
    let mut state = State::default();
    let low = observed(Signal::MemoryAvailable, 150 * MI, 1000 * MI);
    let synced = state.synchronize(&thresholds, &low, Duration::from_secs(300), t0);
    assert!(synced.pressure.memory);
    assert!(synced.thresholds_met.is_empty(), "the grace period has not passed");
    let synced = state.synchronize(&thresholds, &low, Duration::from_secs(300), t0 + Duration::from_secs(59));
    assert!(synced.thresholds_met.is_empty());
    let synced = state.synchronize(&thresholds, &low, Duration::from_secs(300), t0 + Duration::from_secs(60));
    assert_eq!(synced.thresholds_met, [1]);
    // Recovering in between restarts the grace period.
    let fine = observed(Signal::MemoryAvailable, 900 * MI, 1000 * MI);
    state.synchronize(&thresholds, &fine, Duration::from_secs(300), t0 + Duration::from_secs(70));
    let synced = state.synchronize(&thresholds, &low, Duration::from_secs(300), t0 + Duration::from_secs(80));
    assert!(synced.thresholds_met.is_empty());
}

#[test]
fn memory_thresholds_are_reclaimed_before_disk_ones() {
    let thresholds = [
        threshold(Signal::NodeFsAvailable, Threshold::Bytes(10 * MI), 0),
        threshold(Signal::MemoryAvailable, Threshold::Bytes(100 * MI), 0),
    ];
    let mut both = observed(Signal::NodeFsAvailable, MI, 1000 * MI);
    both.extend(observed(Signal::MemoryAvailable, MI, 1000 * MI));
    let synced = State::default().synchronize(&thresholds, &both, Duration::from_secs(300), Instant::now());
    assert_eq!(synced.thresholds_met, [1, 0]);
}

#[test]
fn a_minimum_reclaim_keeps_a_threshold_met_until_the_signal_recovers_past_it() {
    let thresholds = [EvictionThreshold {
        min_reclaim: Some(Threshold::Bytes(50 * MI)),
        ..threshold(Signal::NodeFsAvailable, Threshold::Bytes(100 * MI), 0)
    }];
    let t0 = Instant::now();
    let mut state = State::default();
    let period = Duration::from_secs(300);
    assert_eq!(
        state.synchronize(&thresholds, &observed(Signal::NodeFsAvailable, 90 * MI, 1 << 40), period, t0).thresholds_met,
        [0]
    );
    let partly = observed(Signal::NodeFsAvailable, 120 * MI, 1 << 40);
    assert_eq!(state.synchronize(&thresholds, &partly, period, t0).thresholds_met, [0], "not 150Mi yet");
    assert_eq!(thresholds_met(&thresholds, [0], &partly, false), Vec::<usize>::new());
    let enough = observed(Signal::NodeFsAvailable, 160 * MI, 1 << 40);
    assert!(state.synchronize(&thresholds, &enough, period, t0).thresholds_met.is_empty());
}

#[test]
fn the_message_names_the_resource_the_threshold_and_the_containers_over_their_requests() {
    let app = pod("app-pod", 0, json!({}));
    let thresholds = [threshold(Signal::MemoryAvailable, Threshold::Bytes(100 * MI), 0)];
    let observations = observed(Signal::MemoryAvailable, 51 * MI, 1 << 34);
    let met = threshold_met_info(Resource::Memory, &thresholds, &[0], &observations);
    assert_eq!(met, Some(("100Mi".to_owned(), "51Mi".to_owned())));
    let (message, annotations) = eviction_message(Resource::Memory, &app, Some(&memory_stats(300 * MI)), met);
    assert_eq!(
        message,
        "The node was low on resource: memory. Threshold quantity: 100Mi, available: 51Mi. Container app was using 300Mi, request is 0, has larger consumption of memory. "
    );
    assert_eq!(annotations[OFFENDING_CONTAINERS_KEY], "app");
    assert_eq!(annotations[OFFENDING_CONTAINERS_USAGE_KEY], "300Mi");
    assert_eq!(annotations[STARVED_RESOURCE_KEY], "memory");

    // A container within its request is not named; without stats only the node is.
    let within = pod("within", 0, json!({"memory": "1Gi"}));
    let (message, _) = eviction_message(Resource::Memory, &within, Some(&memory_stats(300 * MI)), None);
    assert_eq!(message, "The node was low on resource: memory. ");
    let (message, annotations) = eviction_message(Resource::Memory, &within, None, None);
    assert_eq!(message, "The node was low on resource: memory. ");
    assert!(annotations.is_empty());
}

#[test]
fn the_disk_message_counts_writable_layer_and_logs_and_a_percentage_prints_in_bytes() {
    let writer = pod("writer", 0, json!({"ephemeral-storage": "1Mi"}));
    let thresholds = [threshold(Signal::NodeFsAvailable, Threshold::Fraction(0.1), 0)];
    let observations = observed(Signal::NodeFsAvailable, 4096 * 1000, 100 * MI);
    let met = threshold_met_info(Resource::EphemeralStorage, &thresholds, &[0], &observations);
    // int64(float64(100Mi) * float64(float32(0.1))), a binary quantity.
    assert_eq!(met, Some(("10Mi".to_owned(), "4000Ki".to_owned())));
    let stats = disk_stats(2 * MI, 12 * 1024, 500 * MI);
    let (message, _) = eviction_message(Resource::EphemeralStorage, &writer, Some(&stats), met);
    assert_eq!(
        message,
        "The node was low on resource: ephemeral-storage. Threshold quantity: 10Mi, available: 4000Ki. Container app was using 2060Ki, request is 1Mi, has larger consumption of ephemeral-storage. "
    );
}

#[test]
fn counts_print_as_decimal_quantities() {
    let thresholds = [threshold(Signal::PidAvailable, Threshold::Decimal(1000), 0)];
    let observations = observed(Signal::PidAvailable, 900, 4_194_304);
    assert_eq!(
        threshold_met_info(Resource::Pids, &thresholds, &[0], &observations),
        Some(("1k".to_owned(), "900".to_owned()))
    );
    assert_eq!(threshold_met_info(Resource::Memory, &thresholds, &[0], &observations), None);
}

#[test]
fn a_threshold_prints_in_the_format_it_was_written_in() {
    let observations = observed(Signal::MemoryAvailable, 51 * MI, 1 << 34);
    let met = |value: &str| {
        let value = format!("memory.available<{value}").parse::<crate::config::EvictionThresholds>().unwrap();
        let thresholds = [threshold(Signal::MemoryAvailable, value.memory_available, 0)];
        threshold_met_info(Resource::Memory, &thresholds, &[0], &observations).map(|(quantity, _)| quantity)
    };
    assert_eq!(met("100M").as_deref(), Some("100M"));
    assert_eq!(met("100000000").as_deref(), Some("100M"));
    assert_eq!(met("1.5G").as_deref(), Some("1500M"));
    assert_eq!(met("100Mi").as_deref(), Some("100Mi"));
    assert_eq!(met("1024Mi").as_deref(), Some("1Gi"));
}
