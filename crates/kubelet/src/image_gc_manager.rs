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

/// The image collector: what it remembers of each image, shared by its own threshold loop
/// ([`run`]) and the eviction manager, which asks it to free every unused image when the node
/// is short of disk (upstream's `ImageGCManager`, whose `DeleteUnusedImages` the eviction
/// manager calls).
pub struct ImageGcManager {
    policy: ImageGcPolicy,
    runtime: Arc<dyn RuntimeService>,
    images: Arc<dyn ImageService>,
    /// When each present image was first seen and last seen in use. A tokio mutex: a
    /// collection holds it across runtime calls so that two never remove the same images.
    records: tokio::sync::Mutex<HashMap<String, Record>>,
}

/// What one look at the runtime found.
struct Detected {
    listed: Vec<tug_runtime::Image>,
    in_use: HashSet<String>,
}

impl ImageGcManager {
    pub fn new(policy: ImageGcPolicy, runtime: Arc<dyn RuntimeService>, images: Arc<dyn ImageService>) -> Self {
        ImageGcManager { policy, runtime, images, records: tokio::sync::Mutex::new(HashMap::new()) }
    }

    /// Removes unused images, least recently used first, when the image filesystem is at or
    /// above the high threshold, until it would be down to the low one (upstream's
    /// `GarbageCollect`).
    pub async fn garbage_collect(&self, image_fs: &Path) -> Result<(), String> {
        let mut records = self.records.lock().await;
        let detected = self.detect_images(&mut records, Instant::now()).await?;
        let dir = image_fs.to_path_buf();
        let stats = tokio::task::spawn_blocking(move || fs_stats(&dir))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let Some(to_free) = bytes_to_free(stats.capacity, stats.available, &self.policy) else { return Ok(()) };
        let freed = self.free_space(&mut records, &detected, to_free).await;
        if freed < to_free {
            tracing::warn!(
                wanted = to_free,
                freed,
                "image garbage collection could not free enough space: the remaining images are in use or too young"
            );
        }
        Ok(())
    }

    /// Removes every image no container uses and first seen at least the minimum age ago
    /// (upstream's `DeleteUnusedImages`, which the eviction manager calls before evicting pods
    /// for disk). Returns the bytes freed.
    pub async fn delete_unused_images(&self) -> Result<u64, String> {
        let mut records = self.records.lock().await;
        let detected = self.detect_images(&mut records, Instant::now()).await?;
        Ok(self.free_space(&mut records, &detected, u64::MAX).await)
    }

    /// Lists the images and the containers' images, and brings the records up to date: new
    /// images are first seen now, images in use were last used now (upstream's `detectImages`).
    async fn detect_images(&self, records: &mut HashMap<String, Record>, now: Instant) -> Result<Detected, String> {
        let in_use: HashSet<String> = self
            .runtime
            .list_containers(&ContainerFilter::default())
            .await
            .map_err(|e| format!("listing containers: {e}"))?
            .into_iter()
            .map(|c| c.image_ref)
            .collect();
        let listed = self.images.list_images().await.map_err(|e| format!("listing images: {e}"))?;
        let present: HashSet<&str> = listed.iter().map(|i| i.id.as_str()).collect();
        records.retain(|id, _| present.contains(id.as_str()));
        for image in &listed {
            let record = records.entry(image.id.clone()).or_insert(Record { first_seen: now, last_used: now });
            if in_use.contains(&image.id) {
                record.last_used = now;
            }
        }
        Ok(Detected { listed, in_use })
    }

    /// Removes unused images old enough, least recently used first, until `to_free` bytes are
    /// freed or none is left (upstream's `freeSpace`). Returns the bytes freed.
    async fn free_space(&self, records: &mut HashMap<String, Record>, detected: &Detected, to_free: u64) -> u64 {
        let now = Instant::now();
        let candidates: Vec<Candidate> = detected
            .listed
            .iter()
            .filter(|i| !detected.in_use.contains(&i.id))
            .filter_map(|i| {
                let record = records.get(&i.id)?;
                (now.duration_since(record.first_seen) >= self.policy.minimum_age).then(|| Candidate {
                    id: i.id.clone(),
                    size: i.size,
                    last_used: record.last_used,
                })
            })
            .collect();
        let mut freed: u64 = 0;
        for candidate in choose(candidates, to_free) {
            match self.images.remove_image(&candidate.id).await {
                Ok(()) => {
                    freed = freed.saturating_add(candidate.size);
                    records.remove(&candidate.id);
                    tracing::info!(image = %candidate.id, size = candidate.size, "removed unused image");
                }
                Err(error) => tracing::warn!(image = %candidate.id, %error, "removing an unused image"),
            }
        }
        freed
    }
}

/// Runs image garbage collection until `shutdown`: images are detected at once, so that their
/// age counts from the agent's start, then collected every period unless collection is off.
pub async fn run(manager: Arc<ImageGcManager>, config: Arc<Config>, shutdown: CancellationToken) {
    // Even with collection off, the eviction manager's reclaim counts image ages from here.
    if let Err(error) = manager.detect_images(&mut *manager.records.lock().await, Instant::now()).await {
        tracing::warn!(%error, "image garbage collection");
    }
    let policy = manager.policy;
    if policy.high_threshold_percent >= 100 {
        tracing::info!("image garbage collection disabled (--image-gc-high-threshold=100)");
        return;
    }
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(policy.period) => {}
        }
        let image_fs = image_fs_dir(&config, manager.runtime.as_ref()).await;
        if let Err(error) = manager.garbage_collect(&image_fs).await {
            tracing::warn!(%error, "image garbage collection");
        }
    }
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
