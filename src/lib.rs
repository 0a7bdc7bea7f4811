//! `tenancy`: tenant lifecycle for multi-tenant PostgreSQL databases.
//!
//! This file only wires the modules together. What users call is in `api/`;
//! the rules that need no server are in the `tenancy-core` crate.

use pgrx::prelude::*;

mod activity;
mod api;
mod catalog;
mod citus;
mod error;
mod events;
mod guc_scope;
mod gucs;
mod kept_plans;
mod queue;
mod quota;
mod roles;
mod schema_builder;
mod worker;

::pgrx::pg_module_magic!(name, version);

extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
extension_sql_file!(
    "../sql/events.sql",
    name = "events",
    requires = ["bootstrap", event_write]
);
extension_sql_file!(
    "../sql/queue.sql",
    name = "queue",
    requires = ["events", provision_internal, process_next]
);
extension_sql_file!(
    "../sql/pool.sql",
    name = "pool",
    requires = ["queue", pool_build, wake_worker]
);
extension_sql_file!(
    "../sql/lifecycle.sql",
    name = "lifecycle",
    requires = ["pool", migrate_tenant, shared_schema_name, audit_write]
);
extension_sql_file!(
    "../sql/health.sql",
    name = "health",
    requires = ["lifecycle", build_reference]
);
extension_sql_file!(
    "../sql/rls.sql",
    name = "rls",
    requires = ["health", set_tenant]
);
extension_sql_file!(
    "../sql/maintenance.sql",
    name = "maintenance",
    requires = ["rls", partitioned_tables]
);
extension_sql_file!(
    "../sql/metrics.sql",
    name = "metrics",
    requires = ["maintenance", database_file_sizes, activity]
);
extension_sql_file!("../sql/adopt.sql", name = "adopt", requires = ["metrics"]);
extension_sql_file!("../sql/citus.sql", name = "citus", requires = ["adopt"]);
extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::register();
    api::rls::register_invalidation();
    quota::install();
    // The worker and its shared memory exist only when preloaded; without
    // it, process_queue() does the same work when called.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        worker::init_preloaded();
        activity::init_preloaded();
    }
}

#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
