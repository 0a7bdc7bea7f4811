//! What users call: one file per area of the SQL surface.

mod batches;
mod export;
mod health;
mod metrics;
pub mod migrate;
pub mod mobility;
pub mod pool;
pub mod provision;
pub mod rls;
mod templates;
pub mod validate;
