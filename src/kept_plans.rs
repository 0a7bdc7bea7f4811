//! The fixed statements of the hot paths (a provision, a claim from the
//! pool, an audit row), planned once per backend and kept: parsing and
//! planning them on every call was a quarter of a pooled provision.
//!
//! Only fixed texts (`&'static str`) are kept, so nothing a caller writes
//! ever names a plan. A kept plan is replanned by PostgreSQL when what it
//! read changes (the extension dropped and made again, a column added by an
//! upgrade), as any cached plan is.

use crate::error::OrRaise;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiResult, SpiTupleTable};
use pgrx::PgOid;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

thread_local! {
    static KEPT: RefCell<HashMap<&'static str, Rc<OwnedPreparedStatement>>> =
        RefCell::new(HashMap::new());
}

/// The kept plan of `query`, its parameters typed as `args` are (a Rust
/// type gives the same SQL type whether its value is NULL or not).
fn plan(query: &'static str, args: &[DatumWithOid]) -> Rc<OwnedPreparedStatement> {
    if let Some(p) = KEPT.with(|k| k.borrow().get(query).cloned()) {
        return p;
    }
    let types: Vec<PgOid> = args.iter().map(|a| PgOid::from(a.oid())).collect();
    let kept = Rc::new(Spi::connect(|c| c.prepare_mut(query, &types).map(|p| p.keep())).or_raise());
    KEPT.with(|k| k.borrow_mut().insert(query, kept.clone()));
    kept
}

/// Runs `query` with `args` through its kept plan and hands its rows to `read`.
pub fn run<R>(
    query: &'static str,
    args: &[DatumWithOid],
    read: impl FnOnce(SpiTupleTable) -> SpiResult<R>,
) -> R {
    let kept = plan(query, args);
    Spi::connect_mut(|c| {
        let rows = c.update(&*kept, None, args)?;
        read(rows)
    })
    .or_raise()
}

/// The first column of the first row, `None` without a row or for NULL.
pub fn get_one<T: FromDatum + IntoDatum>(query: &'static str, args: &[DatumWithOid]) -> Option<T> {
    run(query, args, |rows| {
        if rows.is_empty() {
            Ok(None)
        } else {
            rows.first().get::<T>(1)
        }
    })
}
