//! Storage controllers (upstream's `pkg/controller/volume`): the PersistentVolume binder,
//! the ephemeral volume controller, and the built-in local-path provisioner that plays the
//! part k3s gives rancher's local-path-provisioner.

pub mod ephemeral;
pub mod local_path;
pub mod persistentvolume;
