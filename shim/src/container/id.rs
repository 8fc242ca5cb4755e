//! Container ids and where containers live in the share: the names every
//! part of the container half agrees on.

/// Where containers live inside the share.
pub const CONTAINERS_DIR: &str = "containers";
/// The agent's limit on container ids (they name host and guest dirs).
pub const MAX_ID: usize = 64;

/// Checks a container id: it names directories on the host and in the
/// guest, so it must be a plain name.
pub fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty()
        || id.len() > MAX_ID
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "container id {id:?} must be 1-{MAX_ID} letters, digits, '-' or '_'"
        ));
    }
    Ok(())
}
