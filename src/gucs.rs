//! Settings (`tenancy.*`). Worker settings are `SIGHUP`: change them with
//! `ALTER SYSTEM` and `SELECT pg_reload_conf()`, no restart.

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

pub static NAPTIME_MS: GucSetting<i32> = GucSetting::<i32>::new(5000);
pub static MAX_WORKERS: GucSetting<i32> = GucSetting::<i32>::new(4);
// read by tenancy._run_due_jobs() through current_setting()
static METRICS_INTERVAL_S: GucSetting<i32> = GucSetting::<i32>::new(300);
static MAINTENANCE_INTERVAL_S: GucSetting<i32> = GucSetting::<i32>::new(3600);
static MAINTENANCE_CHUNK: GucSetting<i32> = GucSetting::<i32>::new(100);
pub static RECYCLE_AFTER: GucSetting<i32> = GucSetting::<i32>::new(200);
pub static RETRY_ATTEMPTS: GucSetting<i32> = GucSetting::<i32>::new(3);
pub static RETRY_DELAY_MS: GucSetting<i32> = GucSetting::<i32>::new(1000);
pub static MAX_BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(10000);
pub static AUDIT_RETENTION: GucSetting<Option<std::ffi::CString>> =
    GucSetting::<Option<std::ffi::CString>>::new(None);
pub static BATCH_RETENTION: GucSetting<Option<std::ffi::CString>> =
    GucSetting::<Option<std::ffi::CString>>::new(Some(c"7 days"));
pub static EVENT_RETENTION: GucSetting<Option<std::ffi::CString>> =
    GucSetting::<Option<std::ffi::CString>>::new(Some(c"7 days"));
pub static METRICS_RETENTION: GucSetting<Option<std::ffi::CString>> =
    GucSetting::<Option<std::ffi::CString>>::new(Some(c"90 days"));
/// A shared tenant's context on Citus's worker nodes (src/citus/tenant_context.rs).
pub static TENANT_PROOF: GucSetting<Option<std::ffi::CString>> =
    GucSetting::<Option<std::ffi::CString>>::new(None);
pub static TENANT_ID: GucSetting<Option<std::ffi::CString>> =
    GucSetting::<Option<std::ffi::CString>>::new(None);
pub static TRACK_ACTIVITY: GucSetting<bool> = GucSetting::<bool>::new(true);
pub static ACTIVITY_PERIOD_S: GucSetting<i32> = GucSetting::<i32>::new(3600);

pub fn register() {
    GucRegistry::define_bool_guc(
        c"tenancy.track_activity",
        c"Counts each tenant's statements, their time and rows in tenancy.tenant_activity.",
        c"Needs the library preloaded. Superuser only: a tenant's session cannot turn it off.",
        &TRACK_ACTIVITY,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"tenancy.activity_period",
        c"Length of a period of tenancy.tenant_activity, which shows the current one and the one before.",
        c"Periods start at multiples of it since the Unix epoch; a change starts counting anew.",
        &ACTIVITY_PERIOD_S,
        1,
        7 * 24 * 3600,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_string_guc(
        c"tenancy.metrics_retention",
        c"tenant_metrics partitions wholly older than this are dropped by maintenance; empty keeps them all.",
        c"",
        &METRICS_RETENTION,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"tenancy.audit_retention",
        c"Audit log partitions wholly older than this are dropped by maintenance; empty keeps them all.",
        c"",
        &AUDIT_RETENTION,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"tenancy.batch_retention",
        c"Finished batches older than this are removed by maintenance.",
        c"",
        &BATCH_RETENTION,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"tenancy.event_retention",
        c"Events (tenancy.events) older than this are removed by maintenance.",
        c"",
        &EVENT_RETENTION,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"tenancy.tenant_id",
        c"The current tenant (set it with tenancy.set_tenant).",
        c"Read by tenancy.current_tenant_id() and the RLS policies; only superusers and set_tenant may change it.",
        &TENANT_ID,
        GucContext::Suset,
        GucFlags::DISALLOW_IN_FILE,
    );
    // USERSET so that Citus's connections (as the user) may set it on the
    // workers; its check hook lets no one else, and only superusers read it
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"tenancy.tenant_proof",
            c"The current shared tenant on a Citus worker node (set by tenancy.set_tenant on the coordinator).",
            c"Sent by Citus with the transaction; a worker believes it only with a MAC of its own key.",
            &TENANT_PROOF,
            GucContext::Userset,
            GucFlags::NO_SHOW_ALL | GucFlags::SUPERUSER_ONLY | GucFlags::DISALLOW_IN_FILE,
            Some(crate::citus::tenant_context::check_proof),
            None,
            None,
        );
    }
    GucRegistry::define_int_guc(
        c"tenancy.naptime",
        c"How long the background worker sleeps between looks at the queue.",
        c"A committed batch wakes it at once; this is the safety net and the pace of periodic jobs.",
        &NAPTIME_MS,
        100,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"tenancy.metrics_interval",
        c"How often the worker refreshes tenant metrics (the job metrics).",
        c"A change applies from the job's next run.",
        &METRICS_INTERVAL_S,
        1,
        7 * 24 * 3600,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"tenancy.maintenance_interval",
        c"How often the worker runs tenancy.run_maintenance() (the job maintenance).",
        c"A change applies from the job's next run.",
        &MAINTENANCE_INTERVAL_S,
        1,
        7 * 24 * 3600,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"tenancy.maintenance_chunk",
        c"Tenants whose partitions the worker's maintenance does in one transaction.",
        c"A run over more tenants takes several transactions, so it never holds a lock on every tenant table at once.",
        &MAINTENANCE_CHUNK,
        1,
        100_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"tenancy.max_workers",
        c"Most item workers running at once in one database.",
        c"Each batch is further limited by its max_concurrent, and by free max_worker_processes slots.",
        &MAX_WORKERS,
        1,
        64,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"tenancy.worker_recycle_after",
        c"Items an item worker processes before it exits and a fresh one takes over.",
        c"Bounds the relation cache a long-lived backend accumulates by touching many tenant tables.",
        &RECYCLE_AFTER,
        1,
        100_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"tenancy.retry_attempts",
        c"Default retries of a batch item after a transient error.",
        c"",
        &RETRY_ATTEMPTS,
        0,
        20,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"tenancy.retry_delay",
        c"Default base of the exponential backoff between retries.",
        c"",
        &RETRY_DELAY_MS,
        0,
        3_600_000,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"tenancy.max_batch_size",
        c"Most tenants in one provision_batch call.",
        c"",
        &MAX_BATCH_SIZE,
        1,
        1_000_000,
        GucContext::Suset,
        GucFlags::default(),
    );
}
