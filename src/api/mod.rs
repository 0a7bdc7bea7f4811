//! What users call: one file per area of the SQL surface.

mod provision;
mod templates;
mod validate;
