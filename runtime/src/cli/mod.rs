//! Operator commands that talk to a running `vmpod serve`.

pub mod images;
