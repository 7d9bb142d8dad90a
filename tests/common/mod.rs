//! Shared helpers of the integration tests (`mod common;`).
pub mod vm;
