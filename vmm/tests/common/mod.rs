//! Helpers shared by the VMM's integration tests.
// Each test binary uses a subset.
#![allow(dead_code)]

pub mod guests;
