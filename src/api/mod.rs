//! What users call: one file per area of the SQL surface.

mod batches;
mod provision;
mod templates;
pub mod validate;
