//! The three patch formats the API accepts: JSON patch (RFC 6902), JSON merge patch (RFC 7386)
//! and Kubernetes' strategic merge patch.

pub mod json;
pub mod merge;
pub mod strategic;
