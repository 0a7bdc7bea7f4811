//! The `options` of `provision` and the items of a batch: parsed from JSON,
//! every problem collected so one error can list them all.

use crate::slug::validate_slug;
use crate::{Problem, TenancyError};
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    Schema,
    Shared,
}

impl Isolation {
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Schema => "schema",
            Isolation::Shared => "shared",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProvisionOptions {
    pub domain: Option<String>,
    pub email: Option<String>,
    pub tenant_type: Option<String>,
    pub settings: Value,
    pub features: Value,
    pub max_users: Option<i64>,
    pub max_storage_bytes: Option<i64>,
    pub isolation: Isolation,
    pub if_not_exists: bool,
    /// `false` always builds the schema, even when the warm pool has one ready.
    pub pool: bool,
}

impl Default for ProvisionOptions {
    fn default() -> Self {
        ProvisionOptions {
            domain: None,
            email: None,
            tenant_type: None,
            settings: Value::Object(Map::new()),
            features: Value::Object(Map::new()),
            max_users: None,
            max_storage_bytes: None,
            isolation: Isolation::Schema,
            if_not_exists: false,
            pool: true,
        }
    }
}

pub const OPTION_KEYS: &[&str] = &[
    "domain",
    "email",
    "tenant_type",
    "settings",
    "features",
    "max_users",
    "max_storage_bytes",
    "isolation",
    "if_not_exists",
    "pool",
];

/// Keys of a batch item besides the options.
pub const ITEM_KEYS: &[&str] = &["slug", "name", "template"];

fn text(v: &Value, key: &str, max: usize, problems: &mut Vec<Problem>) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) if s.is_empty() => {
            problems.push(Problem::new(key, "must not be empty"));
            None
        }
        Value::String(s) if s.chars().count() > max => {
            problems.push(Problem::new(key, format!("longer than {max} characters")));
            None
        }
        Value::String(s) => Some(s.clone()),
        _ => {
            problems.push(Problem::new(key, "must be a string"));
            None
        }
    }
}

fn non_negative(v: &Value, key: &str, problems: &mut Vec<Problem>) -> Option<i64> {
    match v {
        Value::Null => None,
        Value::Number(n) => match n.as_i64() {
            Some(i) if i >= 0 => Some(i),
            _ => {
                problems.push(Problem::new(key, "must be a non-negative integer"));
                None
            }
        },
        _ => {
            problems.push(Problem::new(key, "must be a non-negative integer"));
            None
        }
    }
}

fn flag(v: &Value, key: &str, problems: &mut Vec<Problem>) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        _ => {
            problems.push(Problem::new(key, "must be true or false"));
            None
        }
    }
}

fn valid_domain(d: &str) -> bool {
    d.len() <= 253
        && d.split('.').count() >= 2
        && d.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}

fn valid_email(e: &str) -> bool {
    match e.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !e.chars().any(|c| c.is_whitespace() || c.is_control())
                && domain.contains('.')
                && !domain.contains('@')
        }
        None => false,
    }
}

/// Parses one option key into `opts`; unknown keys are left to the caller.
fn apply_option(opts: &mut ProvisionOptions, key: &str, v: &Value, problems: &mut Vec<Problem>) {
    match key {
        "domain" => {
            opts.domain = text(v, key, 253, problems);
            if let Some(d) = &opts.domain {
                if !valid_domain(d) {
                    problems.push(Problem::new(
                        key,
                        "must be a lowercase host name such as acme.example.com",
                    ));
                }
            }
        }
        "email" => {
            opts.email = text(v, key, 320, problems);
            if let Some(e) = &opts.email {
                if !valid_email(e) {
                    problems.push(Problem::new(key, "is not an email address"));
                }
            }
        }
        "tenant_type" => opts.tenant_type = text(v, key, 63, problems),
        "settings" | "features" => match v {
            Value::Object(_) => {
                if key == "settings" {
                    opts.settings = v.clone()
                } else {
                    opts.features = v.clone()
                }
            }
            _ => problems.push(Problem::new(key, "must be a JSON object")),
        },
        "max_users" => opts.max_users = non_negative(v, key, problems),
        "max_storage_bytes" => opts.max_storage_bytes = non_negative(v, key, problems),
        "isolation" => match v.as_str() {
            Some("schema") => opts.isolation = Isolation::Schema,
            Some("shared") => opts.isolation = Isolation::Shared,
            _ => problems.push(Problem::new(key, "must be \"schema\" or \"shared\"")),
        },
        "if_not_exists" => opts.if_not_exists = flag(v, key, problems).unwrap_or(false),
        "pool" => opts.pool = flag(v, key, problems).unwrap_or(true),
        _ => unreachable!("caller checks the key"),
    }
}

fn unknown_key(key: &str, allowed: &[&[&str]]) -> Problem {
    let all: Vec<&str> = allowed.iter().flat_map(|k| k.iter().copied()).collect();
    Problem::new(key, format!("unknown key (allowed: {})", all.join(", ")))
}

/// Parses the `options` argument of `provision`. NULL means no options.
pub fn parse_provision_options(v: Option<&Value>) -> Result<ProvisionOptions, TenancyError> {
    let mut opts = ProvisionOptions::default();
    let mut problems = Vec::new();
    match v {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (key, value) in map {
                if OPTION_KEYS.contains(&key.as_str()) {
                    apply_option(&mut opts, key, value, &mut problems);
                } else {
                    problems.push(unknown_key(key, &[OPTION_KEYS]));
                }
            }
        }
        Some(_) => problems.push(Problem::new("options", "must be a JSON object")),
    }
    if problems.is_empty() {
        Ok(opts)
    } else {
        Err(TenancyError::InvalidOptions(problems))
    }
}

/// One tenant of a batch (or of `validate`).
#[derive(Debug, Clone, PartialEq)]
pub struct TenantSpec {
    pub slug: String,
    pub name: Option<String>,
    pub template: String,
    pub options: ProvisionOptions,
}

/// Parses one batch item. On failure the slug is still returned when it could
/// be read, so a report can name the item.
pub fn parse_item(v: &Value) -> Result<TenantSpec, (Option<String>, Vec<Problem>)> {
    let Value::Object(map) = v else {
        return Err((None, vec![Problem::new("item", "must be a JSON object")]));
    };
    let mut problems = Vec::new();
    let mut opts = ProvisionOptions::default();
    let slug_text = map.get("slug").and_then(Value::as_str).map(str::to_string);
    match map.get("slug") {
        None | Some(Value::Null) => problems.push(Problem::new("slug", "is missing")),
        Some(Value::String(s)) => {
            if let Err(e) = validate_slug(Some(s)) {
                let reason = match e {
                    TenancyError::InvalidSlug { reason, .. } => reason,
                    other => other.to_string(),
                };
                problems.push(Problem::new("slug", reason));
            }
        }
        Some(_) => problems.push(Problem::new("slug", "must be a string")),
    }
    let name = map
        .get("name")
        .and_then(|v| text(v, "name", 200, &mut problems));
    let template = match map.get("template") {
        None | Some(Value::Null) => Some("default".to_string()),
        Some(v) => text(v, "template", 63, &mut problems),
    };
    for (key, value) in map {
        if ITEM_KEYS.contains(&key.as_str()) {
            continue;
        }
        if OPTION_KEYS.contains(&key.as_str()) {
            apply_option(&mut opts, key, value, &mut problems);
        } else {
            problems.push(unknown_key(key, &[ITEM_KEYS, OPTION_KEYS]));
        }
    }
    if problems.is_empty() {
        Ok(TenantSpec {
            slug: slug_text.expect("checked above"),
            name,
            template: template.expect("checked above"),
            options: opts,
        })
    } else {
        Err((slug_text, problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults() {
        let o = parse_provision_options(None).unwrap();
        assert_eq!(o, ProvisionOptions::default());
        let o = parse_provision_options(Some(&json!({}))).unwrap();
        assert_eq!(o.isolation, Isolation::Schema);
        assert!(o.pool);
    }

    #[test]
    fn every_problem_listed() {
        let e = parse_provision_options(Some(&json!({
            "domain": "Not A Domain",
            "max_users": -1,
            "isolation": "rows",
            "colour": "red",
            "settings": [1]
        })))
        .unwrap_err();
        let TenancyError::InvalidOptions(problems) = &e else {
            panic!("{e:?}")
        };
        let at: Vec<&str> = problems.iter().map(|p| p.at.as_str()).collect();
        assert_eq!(at.len(), 5, "{problems:?}");
        for k in ["domain", "max_users", "isolation", "colour", "settings"] {
            assert!(at.contains(&k), "{k} in {at:?}");
        }
        assert_eq!(e.sqlstate(), "22023");
    }

    #[test]
    fn options_must_be_object() {
        assert!(parse_provision_options(Some(&json!([1]))).is_err());
        assert!(parse_provision_options(Some(&json!("x"))).is_err());
    }

    #[test]
    fn full_options() {
        let o = parse_provision_options(Some(&json!({
            "domain": "acme.example.com", "email": "ops@acme.io", "tenant_type": "enterprise",
            "settings": {"tz": "UTC"}, "features": {"sso": true}, "max_users": 50,
            "max_storage_bytes": 1073741824u64, "isolation": "shared", "if_not_exists": true, "pool": false
        })))
        .unwrap();
        assert_eq!(o.domain.as_deref(), Some("acme.example.com"));
        assert_eq!(o.max_users, Some(50));
        assert_eq!(o.isolation, Isolation::Shared);
        assert!(o.if_not_exists && !o.pool);
    }

    #[test]
    fn items() {
        let t = parse_item(&json!({"slug": "acme", "name": "Acme", "max_users": 3})).unwrap();
        assert_eq!(t.template, "default");
        assert_eq!(t.options.max_users, Some(3));
        let (slug, problems) = parse_item(&json!({"slug": "Bad", "oops": 1})).unwrap_err();
        assert_eq!(slug.as_deref(), Some("Bad"));
        assert_eq!(problems.len(), 2);
        let (slug, problems) = parse_item(&json!({"name": "x"})).unwrap_err();
        assert!(slug.is_none());
        assert_eq!(problems[0].reason, "is missing");
        assert!(parse_item(&json!(5)).is_err());
    }
}
