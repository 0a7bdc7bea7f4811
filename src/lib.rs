//! `tenancy`: tenant lifecycle for multi-tenant PostgreSQL databases.
//!
//! This file only wires the modules together. What users call is in `api/`;
//! the rules that need no server are in the `tenancy-core` crate.

use pgrx::prelude::*;

mod api;
mod catalog;
mod error;
mod guc_scope;
mod schema_builder;

::pgrx::pg_module_magic!(name, version);

extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
