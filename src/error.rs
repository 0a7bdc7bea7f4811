//! Raising errors with a real SQLSTATE.

use pgrx::pg_sys::errcodes::PgSqlErrorCode;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::PgLogLevel;
use tenancy_core::TenancyError;

/// The error code of a five-character SQLSTATE such as `"23505"`.
pub fn sqlstate(code: &str) -> PgSqlErrorCode {
    let b = code.as_bytes();
    assert_eq!(b.len(), 5, "SQLSTATE must have 5 characters: {code}");
    let six = |c: u8| ((c.wrapping_sub(b'0')) & 0x3F) as i32;
    PgSqlErrorCode::from(
        six(b[0]) + (six(b[1]) << 6) + (six(b[2]) << 12) + (six(b[3]) << 18) + (six(b[4]) << 24),
    )
}

/// The five characters of an error code: the inverse of [`sqlstate`].
pub fn sqlstate_text(code: PgSqlErrorCode) -> String {
    let n = code as i32;
    (0..5)
        .map(|i| (((n >> (6 * i)) & 0x3F) as u8 + b'0') as char)
        .collect()
}

/// Raises a tenancy error as a PostgreSQL ERROR; never returns.
#[track_caller]
pub fn raise(e: TenancyError) -> ! {
    let mut report = ErrorReport::new(sqlstate(e.sqlstate()), e.to_string(), "tenancy");
    if let Some(detail) = e.detail() {
        report = report.set_detail(detail);
    }
    if let Some(hint) = e.hint() {
        report = report.set_hint(hint);
    }
    report.report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// Raises any error with an explicit SQLSTATE, message, detail and hint.
#[track_caller]
pub fn raise_with(
    code: PgSqlErrorCode,
    message: String,
    detail: Option<String>,
    hint: Option<String>,
) -> ! {
    let mut report = ErrorReport::new(code, message, "tenancy");
    if let Some(d) = detail {
        report = report.set_detail(d);
    }
    if let Some(h) = hint {
        report = report.set_hint(h);
    }
    report.report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for Result<T, TenancyError> {
    #[track_caller]
    fn or_raise(self) -> T {
        self.unwrap_or_else(|e| raise(e))
    }
}

impl<T> OrRaise<T> for Result<T, pgrx::spi::Error> {
    /// An SPI error here is a bug in our own SQL, not the user's input.
    #[track_caller]
    fn or_raise(self) -> T {
        self.unwrap_or_else(|e| {
            raise_with(
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                format!("tenancy internal query failed: {e}"),
                None,
                None,
            )
        })
    }
}
