//! Pod networking. The CNI client lives here; today it answers whether the
//! node's network is ready. Per-pod netns and TAP setup join it with the CNI
//! issue.

pub mod cni;
pub mod plugin;
