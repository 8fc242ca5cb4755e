//! Pod networking: which CNI network pods join (`cni`), the CNI exec
//! protocol (`plugin`), a pod's named netns (`netns`), the TAP that carries
//! the CNI interface into the VM (`tap`), and the attachment that ties them
//! together for one pod, ADD to DEL (`attachment`).

pub mod attachment;
pub mod cni;
pub mod netns;
pub mod plugin;
pub mod tap;
