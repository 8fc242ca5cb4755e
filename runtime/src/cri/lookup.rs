//! Finding records by the ids clients type.

use tonic::Status;

use crate::error::store_err;
use crate::state::StoreError;

/// Finds a record by full id or by a unique id prefix, as crictl users
/// type them. `what` names the field in errors ("pod_sandbox_id").
pub(crate) fn find_by_id_or_prefix<T>(
    what: &str,
    id: &str,
    get: impl FnOnce(&str) -> Result<Option<T>, StoreError>,
    list: impl FnOnce() -> Result<Vec<T>, StoreError>,
    id_of: impl Fn(&T) -> &str,
) -> Result<Option<T>, Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument(format!("{what} is required")));
    }
    if let Some(rec) = get(id).map_err(store_err)? {
        return Ok(Some(rec));
    }
    let mut matches: Vec<T> = list()
        .map_err(store_err)?
        .into_iter()
        .filter(|r| id_of(r).starts_with(id))
        .collect();
    match matches.len() {
        0 => Ok(None),
        1 => Ok(matches.pop()),
        n => Err(Status::invalid_argument(format!(
            "{what} prefix {id:?} matches {n} records"
        ))),
    }
}
