//! Which failures are worth another attempt, and how long to wait before
//! it: of batch items (src/queue.rs) and of periodic jobs.

/// Errors that may go away by themselves: serialization failures, deadlocks,
/// lock timeouts, cancelled statements, and resource exhaustion (class 53).
pub fn is_transient(sqlstate: &str) -> bool {
    matches!(sqlstate, "40001" | "40P01" | "55P03" | "57014") || sqlstate.starts_with("53")
}

/// The one backoff policy, of batch items and of periodic jobs: the delay
/// before attempt `attempt + 1`, after `attempt` failures, is exponential
/// from `base_ms`, times a jitter of ±25% (`unit` is uniform in [0, 1); 0.5
/// is no jitter), and at most `cap_ms`.
fn capped_backoff_ms(attempt: u32, base_ms: f64, unit: f64, cap_ms: f64) -> f64 {
    let exp = 2f64.powi(attempt.saturating_sub(1).min(30) as i32);
    let jitter = 0.75 + 0.5 * unit.clamp(0.0, 1.0);
    (base_ms.max(0.0) * exp * jitter).min(cap_ms)
}

/// A batch item's retry: jittered, so that items failing together do not
/// retry together; at most an hour.
pub fn backoff_ms(attempt: u32, base_ms: f64, unit: f64) -> f64 {
    capped_backoff_ms(attempt, base_ms, unit, 3_600_000.0)
}

/// A periodic job that failed `failures` times in a row runs again after
/// twice its interval, then 4, 8, and at most 16 intervals (no jitter: one
/// job per database, nothing to spread).
pub fn job_backoff_ms(failures: u32, every_ms: f64) -> f64 {
    capped_backoff_ms(failures, 2.0 * every_ms, 0.5, 16.0 * every_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_errors() {
        for s in ["40001", "40P01", "55P03", "57014", "53200", "53300"] {
            assert!(is_transient(s), "{s}");
        }
        for s in ["23505", "42P01", "22023", "42601", "XX000"] {
            assert!(!is_transient(s), "{s}");
        }
    }

    #[test]
    fn backoff_grows_with_jitter_and_cap() {
        assert_eq!(backoff_ms(1, 1000.0, 0.5), 1000.0);
        assert_eq!(backoff_ms(2, 1000.0, 0.5), 2000.0);
        assert_eq!(backoff_ms(3, 1000.0, 0.5), 4000.0);
        assert_eq!(backoff_ms(1, 1000.0, 0.0), 750.0);
        assert_eq!(backoff_ms(1, 1000.0, 0.999_999).round(), 1250.0);
        assert_eq!(backoff_ms(40, 1000.0, 0.5), 3_600_000.0);
        assert_eq!(backoff_ms(0, 1000.0, 0.5), 1000.0);
    }

    #[test]
    fn job_backoff_doubles_up_to_16_intervals() {
        let hour = 3_600_000.0;
        assert_eq!(job_backoff_ms(1, hour), 2.0 * hour);
        assert_eq!(job_backoff_ms(2, hour), 4.0 * hour);
        assert_eq!(job_backoff_ms(3, hour), 8.0 * hour);
        assert_eq!(job_backoff_ms(4, hour), 16.0 * hour);
        assert_eq!(job_backoff_ms(50, 1000.0), 16_000.0);
    }
}
