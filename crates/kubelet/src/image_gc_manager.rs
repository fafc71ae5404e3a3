//! Image garbage collection at disk thresholds (upstream's `images.ImageGCManager`).
//!
//! Every period the agent looks at the filesystem holding the image store. When its usage is
//! at or above `--image-gc-high-threshold` percent, it removes images no container uses (in
//! any state), least recently used first, skipping images first seen less than
//! `--minimum-image-ttl-duration` ago, until usage would be down to `--image-gc-low-threshold`.
//! Like upstream, "last used" is the last time a check found a container using the image.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tug_runtime::ImageService;
use tug_runtime::cri::{ContainerFilter, RuntimeService};

use crate::Config;
use crate::machine::fs_stats;

/// When and how much to collect: upstream's `ImageGCPolicy`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageGcPolicy {
    /// Usage (percent of the image filesystem) at which collection starts (85).
    pub high_threshold_percent: u8,
    /// Usage collection brings the filesystem down to (80).
    pub low_threshold_percent: u8,
    /// Images younger than this (since first seen) are never collected (2 minutes).
    pub minimum_age: Duration,
    /// How often usage is checked (upstream: 5 minutes).
    pub period: Duration,
}

impl Default for ImageGcPolicy {
    fn default() -> Self {
        ImageGcPolicy {
            high_threshold_percent: 85,
            low_threshold_percent: 80,
            minimum_age: Duration::from_secs(120),
            period: Duration::from_secs(300),
        }
    }
}

/// What the collector remembers of an image between checks.
#[derive(Debug, Clone, Copy)]
struct Record {
    first_seen: Instant,
    last_used: Instant,
}

/// A candidate for removal.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub id: String,
    pub size: u64,
    pub last_used: Instant,
}

/// Which images to remove to free `to_free` bytes: least recently used first, as upstream.
pub fn choose(mut candidates: Vec<Candidate>, to_free: u64) -> Vec<Candidate> {
    candidates.sort_by_key(|c| c.last_used);
    let mut freed = 0;
    let mut chosen = Vec::new();
    for candidate in candidates {
        if freed >= to_free {
            break;
        }
        freed += candidate.size;
        chosen.push(candidate);
    }
    chosen
}

/// Bytes to free so that usage drops to the low threshold, if usage is at or above the high one.
pub fn bytes_to_free(capacity: u64, available: u64, policy: &ImageGcPolicy) -> Option<u64> {
    if capacity == 0 {
        return None;
    }
    let used = capacity.saturating_sub(available);
    let percent = used as f64 * 100.0 / capacity as f64;
    if percent < f64::from(policy.high_threshold_percent) {
        return None;
    }
    let target = capacity as f64 * f64::from(policy.low_threshold_percent) / 100.0;
    Some((used as f64 - target).max(0.0) as u64)
}

/// A directory on the image filesystem: the one the runtime names (CRI `ImageFsInfo`, as
/// upstream's CRI stats provider asks), else the kubelet's own image store.
pub async fn image_fs_dir(config: &Config, runtime: &dyn RuntimeService) -> PathBuf {
    match runtime.image_fs_info().await {
        Ok(Some(info)) => info.mountpoint,
        Ok(None) => config.image_dir(),
        Err(error) => {
            tracing::warn!(%error, "the runtime did not say where its images are: using the agent's image directory");
            config.image_dir()
        }
    }
}

/// Runs image garbage collection until `shutdown`.
pub async fn run(
    config: Arc<Config>,
    runtime: Arc<dyn RuntimeService>,
    images: Arc<dyn ImageService>,
    shutdown: CancellationToken,
) {
    let policy = config.image_gc;
    if policy.high_threshold_percent >= 100 {
        tracing::info!("image garbage collection disabled (--image-gc-high-threshold=100)");
        return;
    }
    let mut records: HashMap<String, Record> = HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(policy.period) => {}
        }
        let image_fs = image_fs_dir(&config, runtime.as_ref()).await;
        if let Err(error) = collect(&image_fs, &policy, runtime.as_ref(), images.as_ref(), &mut records).await {
            tracing::warn!(%error, "image garbage collection");
        }
    }
}

async fn collect(
    image_dir: &Path,
    policy: &ImageGcPolicy,
    runtime: &dyn RuntimeService,
    images: &dyn ImageService,
    records: &mut HashMap<String, Record>,
) -> Result<(), String> {
    let now = Instant::now();
    let in_use: HashSet<String> = runtime
        .list_containers(&ContainerFilter::default())
        .await
        .map_err(|e| format!("listing containers: {e}"))?
        .into_iter()
        .map(|c| c.image_ref)
        .collect();
    let listed = images.list_images().await.map_err(|e| format!("listing images: {e}"))?;
    let present: HashSet<&str> = listed.iter().map(|i| i.id.as_str()).collect();
    records.retain(|id, _| present.contains(id.as_str()));
    for image in &listed {
        let record = records.entry(image.id.clone()).or_insert(Record { first_seen: now, last_used: now });
        if in_use.contains(&image.id) {
            record.last_used = now;
        }
    }
    let dir = image_dir.to_path_buf();
    let stats = tokio::task::spawn_blocking(move || fs_stats(&dir))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let Some(to_free) = bytes_to_free(stats.capacity, stats.available, policy) else { return Ok(()) };
    let candidates: Vec<Candidate> = listed
        .iter()
        .filter(|i| !in_use.contains(&i.id))
        .filter_map(|i| {
            let record = records.get(&i.id)?;
            (now.duration_since(record.first_seen) >= policy.minimum_age).then(|| Candidate {
                id: i.id.clone(),
                size: i.size,
                last_used: record.last_used,
            })
        })
        .collect();
    let mut freed = 0;
    for candidate in choose(candidates, to_free) {
        match images.remove_image(&candidate.id).await {
            Ok(()) => {
                freed += candidate.size;
                records.remove(&candidate.id);
                tracing::info!(image = %candidate.id, size = candidate.size, "removed unused image");
            }
            Err(error) => tracing::warn!(image = %candidate.id, %error, "removing an unused image"),
        }
    }
    if freed < to_free {
        tracing::warn!(
            wanted = to_free,
            freed,
            "image garbage collection could not free enough space: the remaining images are in use or too young"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collection_starts_at_the_high_threshold_and_aims_for_the_low_one() {
        let policy = ImageGcPolicy::default();
        assert_eq!(bytes_to_free(1000, 200, &policy), None); // 80% used
        assert_eq!(bytes_to_free(1000, 150, &policy), Some(50)); // 85% -> 80%
        assert_eq!(bytes_to_free(1000, 0, &policy), Some(200));
        assert_eq!(bytes_to_free(0, 0, &policy), None);
    }

    #[test]
    fn least_recently_used_images_go_first_until_enough_is_freed() {
        let t = Instant::now();
        let c = |id: &str, size, secs| Candidate { id: id.into(), size, last_used: t + Duration::from_secs(secs) };
        let chosen = choose(vec![c("new", 100, 30), c("old", 100, 10), c("mid", 100, 20)], 150);
        let ids: Vec<&str> = chosen.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["old", "mid"]);
        assert!(choose(vec![c("a", 10, 1)], 0).is_empty());
    }
}
