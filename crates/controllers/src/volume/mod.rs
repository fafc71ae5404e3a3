//! Storage controllers (upstream's `pkg/controller/volume`): the PersistentVolume binder,
//! the ephemeral volume controller, the claim and volume protection controllers, and the
//! built-in local-path provisioner that plays the part k3s gives rancher's
//! local-path-provisioner.

pub mod attachdetach;
pub mod ephemeral;
pub mod local_path;
pub mod persistentvolume;
pub mod pvcprotection;
pub mod pvprotection;

use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;

/// Adds (`add`) or removes a finalizer with a JSON patch of the whole list, so that nothing
/// else of the object is written.
async fn patch_finalizer<K>(api: &Api<K>, obj: &K, finalizer: &str, add: bool) -> Result<(), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let current = obj.finalizers();
    let mut wanted: Vec<&str> = current.iter().map(String::as_str).filter(|f| *f != finalizer).collect();
    if add {
        wanted.push(finalizer);
    }
    // Pinned to the version it was computed from: any change meanwhile fails the test (422)
    // and the object comes back through the informer.
    let test = json!({"op": "test", "path": "/metadata/resourceVersion", "value": obj.meta().resource_version});
    let patch = json!([test, {"op": "add", "path": "/metadata/finalizers", "value": wanted}]);
    let patch = Patch::Json::<()>(serde_json::from_value(patch).expect("a well-formed JSON patch"));
    api.patch(&obj.name_any(), &PatchParams::default(), &patch).await.map(|_| ())
}
