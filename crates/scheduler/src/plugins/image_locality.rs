//! ImageLocality: prefers nodes that already have the pod's container images
//! (`node.status.images`), each image's size scaled by the share of nodes that have it so
//! that an image on every node does not pull all pods to one of them (upstream's "spread").

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Pod;

use crate::framework::{CycleState, MAX_NODE_SCORE, NodeInfo, Plugin, PreScorePlugin, ScorePlugin, Status};

pub const NAME: &str = "ImageLocality";
const MB: i64 = 1024 * 1024;
/// Below this total (a small image) every node scores 0.
const MIN_THRESHOLD: i64 = 23 * MB;
/// The total per container at which a node scores the maximum.
const MAX_CONTAINER_THRESHOLD: i64 = 1000 * MB;

/// Upstream's `normalizedImageName`: a name without a tag or digest means `:latest`.
pub fn normalized_image_name(name: &str) -> String {
    let last = |c: char| name.rfind(c).map_or(-1, |i| i as i64);
    if last(':') <= last('/') { format!("{name}:latest") } else { name.to_string() }
}

/// Image name to (size, how many nodes have it), over a set of nodes.
pub type ImageCounts = HashMap<String, (i64, usize)>;

/// The counts of the whole snapshot, kept by the scheduler's cache as nodes change (upstream's
/// `ImageStateSummary`s) and put in the cycle state under [`SNAPSHOT_IMAGES`], so that
/// PreScore need not scan every node's images for every pod.
pub struct SnapshotImages(pub std::sync::Arc<ImageCounts>);
pub const SNAPSHOT_IMAGES: &str = "ImageLocality/snapshot";

/// Adds (`present`) or removes one node's images to or from `counts`; a name the node lists
/// twice counts once.
pub fn count_node_images(counts: &mut ImageCounts, node: &NodeInfo, present: bool) {
    let mut seen = std::collections::HashSet::new();
    for (name, size) in node_images(node) {
        if !seen.insert(name) {
            continue;
        }
        if present {
            counts.entry(name.to_string()).or_insert((size, 0)).1 += 1;
        } else if let Some(entry) = counts.get_mut(name) {
            entry.1 = entry.1.saturating_sub(1);
            if entry.1 == 0 {
                counts.remove(name);
            }
        }
    }
}

/// For each of the pod's images found on some node: its size and on how many nodes of the
/// snapshot it is; and the pod's container count.
struct ImageStates {
    images: HashMap<String, (i64, usize)>,
    total_nodes: usize,
    /// The pod's images, one per container (a repeated image counts again, as upstream).
    wanted: Vec<String>,
}

fn node_images(node: &NodeInfo) -> impl Iterator<Item = (&str, i64)> {
    node.node
        .status
        .as_ref()
        .and_then(|s| s.images.as_ref())
        .into_iter()
        .flatten()
        .flat_map(|img| img.names.iter().flatten().map(move |n| (n.as_str(), img.size_bytes.unwrap_or(0))))
}

fn pod_images(pod: &Pod) -> Vec<String> {
    let Some(spec) = pod.spec.as_ref() else { return Vec::new() };
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .filter_map(|c| c.image.as_deref())
        .map(normalized_image_name)
        .collect()
}

pub struct ImageLocality;

impl Plugin for ImageLocality {
    fn name(&self) -> &'static str {
        NAME
    }
}

impl PreScorePlugin for ImageLocality {
    fn pre_score(&self, state: &mut CycleState, pod: &Pod, _: &[&NodeInfo], all: &[NodeInfo]) -> Status {
        let wanted = pod_images(pod);
        let images: ImageCounts = match state.read::<SnapshotImages>(SNAPSHOT_IMAGES) {
            Some(SnapshotImages(counts)) => {
                wanted.iter().filter_map(|w| counts.get(w).map(|c| (w.clone(), *c))).collect()
            }
            None => {
                let mut images = ImageCounts::new();
                for node in all {
                    let mut seen = std::collections::HashSet::new();
                    for (name, size) in node_images(node) {
                        if wanted.iter().any(|w| w == name) && seen.insert(name) {
                            images.entry(name.to_string()).or_insert((size, 0)).1 += 1;
                        }
                    }
                }
                images
            }
        };
        if images.is_empty() {
            // No node has any of the images: every node would score 0.
            return Status::skip();
        }
        state.write(NAME, ImageStates { images, total_nodes: all.len(), wanted });
        Status::success()
    }
}

/// Upstream's `calculatePriority`: the clamped sum mapped linearly onto `0..=100`.
fn calculate_priority(sum: i64, containers: usize) -> i64 {
    let max_threshold = MAX_CONTAINER_THRESHOLD * containers.max(1) as i64;
    let sum = sum.clamp(MIN_THRESHOLD, max_threshold);
    MAX_NODE_SCORE * (sum - MIN_THRESHOLD) / (max_threshold - MIN_THRESHOLD)
}

impl ScorePlugin for ImageLocality {
    fn score(&self, state: &CycleState, pod: &Pod, node: &NodeInfo) -> Result<i64, Status> {
        let Some(states) = state.read::<ImageStates>(NAME) else { return Ok(0) };
        let mut sum = 0i64;
        for image in &states.wanted {
            if let Some(&(size, nodes)) = states.images.get(image)
                && node_images(node).any(|(name, _)| name == image)
            {
                // Upstream's scaledImageScore.
                sum += (size as f64 * nodes as f64 / states.total_nodes.max(1) as f64) as i64;
            }
        }
        let containers =
            pod.spec.as_ref().map_or(0, |s| s.containers.len() + s.init_containers.as_ref().map_or(0, Vec::len));
        Ok(calculate_priority(sum, containers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Node;
    use serde_json::{Value, json};
    use std::sync::Arc;

    fn node(name: &str, images: Value) -> NodeInfo {
        let n: Node =
            serde_json::from_value(json!({"metadata": {"name": name}, "status": {"images": images}})).unwrap();
        NodeInfo::new(Arc::new(n))
    }

    fn pod_with(image: &str) -> Pod {
        crate::plugins::testing::pod(json!({"containers": [{"name": "c", "image": image}]}))
    }

    fn scores(p: &Pod, nodes: &[NodeInfo]) -> Vec<i64> {
        let mut state = CycleState::new();
        let feasible: Vec<&NodeInfo> = nodes.iter().collect();
        ImageLocality.pre_score(&mut state, p, &feasible, nodes);
        let scanned: Vec<i64> = nodes.iter().map(|n| ImageLocality.score(&state, p, n).unwrap()).collect();
        // The same from the counts a snapshot keeps.
        let mut counts = ImageCounts::new();
        for n in nodes {
            count_node_images(&mut counts, n, true);
        }
        let mut state = CycleState::new();
        state.write(SNAPSHOT_IMAGES, SnapshotImages(Arc::new(counts)));
        ImageLocality.pre_score(&mut state, p, &feasible, nodes);
        let counted: Vec<i64> = nodes.iter().map(|n| ImageLocality.score(&state, p, n).unwrap()).collect();
        assert_eq!(scanned, counted);
        scanned
    }

    #[test]
    fn counts_follow_nodes_added_and_removed() {
        let a = node("a", json!([{"names": ["img:1", "img:1", "other:2"], "sizeBytes": 5}]));
        let b = node("b", json!([{"names": ["img:1"], "sizeBytes": 5}]));
        let mut counts = ImageCounts::new();
        count_node_images(&mut counts, &a, true);
        count_node_images(&mut counts, &b, true);
        assert_eq!(counts.get("img:1"), Some(&(5, 2)));
        count_node_images(&mut counts, &a, false);
        assert_eq!(counts.get("img:1"), Some(&(5, 1)));
        assert!(!counts.contains_key("other:2"));
    }

    #[test]
    fn names_without_a_tag_mean_latest() {
        assert_eq!(normalized_image_name("nginx"), "nginx:latest");
        assert_eq!(normalized_image_name("registry:5000/app"), "registry:5000/app:latest");
        assert_eq!(normalized_image_name("nginx:1.25"), "nginx:1.25");
        assert_eq!(normalized_image_name("registry:5000/app:v1"), "registry:5000/app:v1");
    }

    #[test]
    fn a_node_with_a_big_image_scores_by_its_spread() {
        let big = json!([{"names": ["app:v1"], "sizeBytes": 500 * MB}]);
        let nodes = [node("a", big.clone()), node("b", json!([])), node("c", json!([]))];
        // 500 MB * 1/3 nodes = 166 MB: (166 - 23) * 100 / (1000 - 23) = 14
        assert_eq!(scores(&pod_with("app:v1"), &nodes), vec![14, 0, 0]);
        let everywhere = [node("a", big.clone()), node("b", big.clone()), node("c", big)];
        // 500 MB on all: (500 - 23) * 100 / 977 = 48
        assert_eq!(scores(&pod_with("app:v1"), &everywhere), vec![48, 48, 48]);
    }

    #[test]
    fn small_or_missing_images_score_zero() {
        let nodes = [node("a", json!([{"names": ["tiny:latest"], "sizeBytes": 5 * MB}]))];
        assert_eq!(scores(&pod_with("tiny"), &nodes), vec![0]);
        assert_eq!(scores(&pod_with("other"), &nodes), vec![0]);
    }
}
