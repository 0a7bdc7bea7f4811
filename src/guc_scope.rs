//! Setting a GUC for a stretch of code and putting it back afterwards, the
//! way PostgreSQL does for a function with a `SET` clause: the caller's
//! `search_path` is untouched once we return, even inside its transaction.

use pgrx::pg_sys;
use std::ffi::CString;

pub struct GucScope {
    nest_level: i32,
}

impl GucScope {
    pub fn new() -> Self {
        GucScope {
            nest_level: unsafe { pg_sys::NewGUCNestLevel() },
        }
    }

    /// Sets `name` to `value` until this scope ends.
    pub fn set(&self, name: &str, value: &str) {
        set_option(
            name,
            value,
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucAction::GUC_ACTION_SAVE,
        );
    }
}

/// Sets a GUC as `SET` (`GUC_ACTION_SET`), `SET LOCAL` (`GUC_ACTION_LOCAL`)
/// or for a `GucScope` (`GUC_ACTION_SAVE`), with the privileges of `context`.
pub fn set_option(
    name: &str,
    value: &str,
    context: pg_sys::GucContext::Type,
    action: pg_sys::GucAction::Type,
) {
    let name = CString::new(name).expect("GUC name has no NUL");
    let value = CString::new(value).expect("GUC value has no NUL");
    unsafe {
        pg_sys::set_config_option(
            name.as_ptr(),
            value.as_ptr(),
            context,
            pg_sys::GucSource::PGC_S_SESSION,
            action,
            true,
            0,
            false,
        );
    }
}

impl Drop for GucScope {
    fn drop(&mut self) {
        // On an error the transaction abort restores every level itself; we
        // only pop our level on the normal path.
        if !std::thread::panicking() {
            unsafe { pg_sys::AtEOXact_GUC(true, self.nest_level) };
        }
    }
}
