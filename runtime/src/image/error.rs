//! How a pull fails. Shared by the pull itself (`pull.rs`) and the
//! identity-token exchange it calls (`token.rs`); `crate::error` maps each
//! kind to its gRPC code.

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("{0}")]
    InvalidReference(String),
    #[error("image {0} not found")]
    NotFound(String),
    #[error("authentication failed for registry {registry}: {detail}")]
    Auth { registry: String, detail: String },
    #[error("blob {digest} from {registry} failed verification: {detail}")]
    Digest {
        registry: String,
        digest: String,
        detail: String,
    },
    #[error("registry {registry} timed out after {secs} s")]
    Timeout { registry: String, secs: u64 },
    #[error("registry {registry}: {detail}")]
    Registry { registry: String, detail: String },
    #[error("image {reference}: {detail}")]
    BadImage { reference: String, detail: String },
    /// A layer is bigger, in bytes, inodes or name length or depth, than
    /// the daemon config allows: a decompression bomb, or an image that
    /// needs the limit raised.
    #[error(
        "image {reference}: layer {digest} {detail}; raise the limit in the daemon config if the image is legitimate"
    )]
    Limit {
        reference: String,
        digest: String,
        detail: String,
    },
    #[error("storing the image: {0}")]
    Store(String),
}
