//! Data layer (in progress).
pub mod migrate;
