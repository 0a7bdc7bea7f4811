//! What users call: one file per area of the SQL surface.

mod batches;
mod health;
mod migrate;
pub mod rls;
pub mod pool;
mod provision;
mod templates;
pub mod validate;
