//! The options of a batch: `provision_batch`'s, and those of a migration.

use crate::batch_items::json_kind;
use crate::{Problem, TenancyError};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub struct BatchOptions {
    pub max_concurrent: i32,
    pub retry_attempts: i32,
    /// Base of the backoff, in milliseconds.
    pub retry_delay_ms: i64,
    pub continue_on_error: bool,
    pub rollback_on_failure: bool,
}

pub const BATCH_OPTION_KEYS: &[&str] = &[
    "max_concurrent",
    "retry_attempts",
    "retry_delay",
    "continue_on_error",
    "rollback_on_failure",
];

/// Reads `retry_delay`: a number of seconds, or a string like `"500ms"`,
/// `"2s"`, `"1 second"`, `"3 minutes"`.
pub fn parse_delay_ms(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n
            .as_f64()
            .filter(|s| *s >= 0.0)
            .map(|s| (s * 1000.0) as i64),
        Value::String(s) => {
            let s = s.trim();
            let split = s
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(s.len());
            let (num, unit) = s.split_at(split);
            let n: f64 = num.parse().ok()?;
            let factor = match unit.trim() {
                "ms" | "millisecond" | "milliseconds" => 1.0,
                "" | "s" | "sec" | "second" | "seconds" => 1000.0,
                "min" | "minute" | "minutes" => 60_000.0,
                _ => return None,
            };
            Some((n * factor) as i64)
        }
        _ => None,
    }
}

/// Items of one batch run at once unless its options say otherwise.
pub const DEFAULT_MAX_CONCURRENT: i32 = 2;

/// Options of a migration batch (`migrate`, `bulk_update` of
/// `template_version`): only `max_concurrent`, read as `provision_batch`
/// reads it. Returns max_concurrent.
pub fn parse_migration_options(v: Option<&Value>) -> Result<i32, TenancyError> {
    if let Some(Value::Object(m)) = v {
        let unknown: Vec<Problem> = m
            .keys()
            .filter(|k| k.as_str() != "max_concurrent")
            .map(|k| Problem::new(k, "unknown key (allowed: max_concurrent)"))
            .collect();
        if !unknown.is_empty() {
            return Err(TenancyError::InvalidOptions(unknown));
        }
    }
    parse_batch_options(v, 0, 0).map(|o| o.max_concurrent)
}

/// Parses batch options over the defaults given (from the GUCs).
pub fn parse_batch_options(
    v: Option<&Value>,
    default_attempts: i32,
    default_delay_ms: i64,
) -> Result<BatchOptions, TenancyError> {
    let mut o = BatchOptions {
        max_concurrent: DEFAULT_MAX_CONCURRENT,
        retry_attempts: default_attempts,
        retry_delay_ms: default_delay_ms,
        continue_on_error: true,
        rollback_on_failure: false,
    };
    let mut problems = Vec::new();
    let map = match v {
        None | Some(Value::Null) => return Ok(o),
        Some(Value::Object(m)) => m,
        Some(other) => {
            return Err(TenancyError::InvalidArgument(format!(
                "batch options must be a JSON object, not {}",
                json_kind(other)
            )))
        }
    };
    for (key, value) in map {
        match key.as_str() {
            "max_concurrent" => match value.as_i64() {
                Some(n) if (1..=20).contains(&n) => o.max_concurrent = n as i32,
                _ => problems.push(Problem::new(key, "must be an integer from 1 to 20")),
            },
            "retry_attempts" => match value.as_i64() {
                Some(n) if (0..=20).contains(&n) => o.retry_attempts = n as i32,
                _ => problems.push(Problem::new(key, "must be an integer from 0 to 20")),
            },
            "retry_delay" => match parse_delay_ms(value) {
                Some(ms) if ms <= 3_600_000 => o.retry_delay_ms = ms,
                _ => problems.push(Problem::new(
                    key,
                    "must be seconds (a number) or a duration such as \"500ms\" or \"2s\", at most 1 hour",
                )),
            },
            "continue_on_error" | "rollback_on_failure" => match value.as_bool() {
                Some(b) if key == "continue_on_error" => o.continue_on_error = b,
                Some(b) => o.rollback_on_failure = b,
                None => problems.push(Problem::new(key, "must be true or false")),
            },
            _ => problems.push(Problem::new(
                key,
                format!("unknown key (allowed: {})", BATCH_OPTION_KEYS.join(", ")),
            )),
        }
    }
    if problems.is_empty() {
        Ok(o)
    } else {
        Err(TenancyError::InvalidOptions(problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn options() {
        let o = parse_batch_options(None, 3, 1000).unwrap();
        assert_eq!(
            (o.max_concurrent, o.retry_attempts, o.retry_delay_ms),
            (2, 3, 1000)
        );
        let o = parse_batch_options(
            Some(
                &json!({"max_concurrent": 4, "retry_delay": "250ms", "rollback_on_failure": true}),
            ),
            3,
            1000,
        )
        .unwrap();
        assert_eq!(
            (o.max_concurrent, o.retry_delay_ms, o.rollback_on_failure),
            (4, 250, true)
        );
        let e = parse_batch_options(
            Some(&json!({"max_concurrent": 21, "retry_delay": "soon", "nope": 1})),
            3,
            1000,
        )
        .unwrap_err();
        let TenancyError::InvalidOptions(p) = e else {
            panic!()
        };
        assert_eq!(p.len(), 3);
        assert!(parse_batch_options(Some(&json!({"max_concurrent": 0})), 3, 1000).is_err());
        assert!(parse_batch_options(Some(&json!([1])), 3, 1000).is_err());
    }

    #[test]
    fn migration_options() {
        assert_eq!(parse_migration_options(None), Ok(DEFAULT_MAX_CONCURRENT));
        assert_eq!(parse_migration_options(Some(&json!({}))), Ok(2));
        assert_eq!(
            parse_migration_options(Some(&json!({"max_concurrent": 4}))),
            Ok(4)
        );
        assert!(parse_migration_options(Some(&json!({"max_concurrent": 21}))).is_err());
        assert!(parse_migration_options(Some(&json!({"retry_attempts": 1}))).is_err());
    }

    #[test]
    fn delays() {
        assert_eq!(parse_delay_ms(&json!(2)), Some(2000));
        assert_eq!(parse_delay_ms(&json!(0.5)), Some(500));
        assert_eq!(parse_delay_ms(&json!("2s")), Some(2000));
        assert_eq!(parse_delay_ms(&json!("1 second")), Some(1000));
        assert_eq!(parse_delay_ms(&json!("3 minutes")), Some(180_000));
        assert_eq!(parse_delay_ms(&json!("100ms")), Some(100));
        assert_eq!(parse_delay_ms(&json!("x")), None);
        assert_eq!(parse_delay_ms(&json!(-1)), None);
    }
}
