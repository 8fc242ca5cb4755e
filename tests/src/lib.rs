//! Harness for vmpod's end-to-end tests: builds and starts the real
//! binaries, and talks to them through their real interfaces.

pub mod daemon;
pub mod guest;
pub mod host;
pub mod pod;
pub mod proxy;
pub mod registry;
pub mod stream;
