//! The long-lived state of `vmpod serve`, shared by all CRI calls.

use std::sync::Arc;

use crate::config::Config;
use crate::state::Store;

pub struct Daemon {
    pub config: Arc<Config>,
    pub store: Store,
}
