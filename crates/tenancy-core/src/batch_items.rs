//! Checks of a list of tenants (a batch, or `validate`): every item checked,
//! every problem reported by ordinal, nothing decided by the first failure.

use crate::options::{parse_item, Isolation, TenantSpec};
use crate::{Problem, TenancyError};
use serde_json::Value;
use std::collections::{HashMap, HashSet};

/// What the database knows that the checks need.
#[derive(Debug, Default)]
pub struct Known {
    /// Slugs already in `tenancy.tenants`, with their status.
    pub taken: HashMap<String, String>,
    /// Templates that exist, with whether they need TimescaleDB.
    pub templates: HashMap<String, bool>,
    pub timescaledb_installed: bool,
    /// Templates that have shared_tables (can provision shared tenants).
    pub shared_templates: HashSet<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ItemReport {
    /// 1-based position in the array.
    pub ordinal: usize,
    pub slug: Option<String>,
    pub spec: Option<TenantSpec>,
    pub errors: Vec<String>,
    /// The error is a conflict with an existing or queued tenant (23505)
    /// rather than bad input (a slug repeated within the batch is bad input).
    pub duplicate: bool,
}

impl ItemReport {
    pub fn valid(&self) -> bool {
        self.errors.is_empty()
    }
}

/// The array of items, or the reason it is not one.
pub fn items_of(v: &Value) -> Result<&Vec<Value>, TenancyError> {
    match v {
        Value::Array(items) => Ok(items),
        other => Err(TenancyError::InvalidArgument(format!(
            "tenants must be a JSON array of objects, not {}",
            json_kind(other)
        ))),
    }
}

pub fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Slugs and template names mentioned by the items, to look up in one query each.
pub fn names_in(items: &[Value]) -> (Vec<String>, Vec<String>) {
    let mut slugs = Vec::new();
    let mut templates = HashSet::new();
    for item in items {
        if let Some(s) = item.get("slug").and_then(Value::as_str) {
            slugs.push(s.to_string());
        }
        let t = match item.get("template") {
            None | Some(Value::Null) => "default",
            Some(v) => v.as_str().unwrap_or("default"),
        };
        templates.insert(t.to_string());
    }
    let mut templates: Vec<String> = templates.into_iter().collect();
    templates.sort();
    (slugs, templates)
}

fn render(p: &Problem) -> String {
    if p.at == "item" {
        p.reason.clone()
    } else {
        format!("{}: {}", p.at, p.reason)
    }
}

/// Checks every item against the rules and against what the database holds.
pub fn check_items(items: &[Value], known: &Known) -> Vec<ItemReport> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let ordinal = i + 1;
        let mut report = ItemReport {
            ordinal,
            slug: item.get("slug").and_then(Value::as_str).map(str::to_string),
            spec: None,
            errors: Vec::new(),
            duplicate: false,
        };
        match parse_item(item) {
            Err((_, problems)) => report.errors.extend(problems.iter().map(render)),
            Ok(spec) => {
                if let Some(first) = seen.get(&spec.slug) {
                    report
                        .errors
                        .push(format!("slug {:?} repeats item {first}", spec.slug));
                }
                if let Some(status) = known.taken.get(&spec.slug) {
                    report.errors.push(if status == "dropped" {
                        format!("slug {:?} is held by a dropped tenant", spec.slug)
                    } else {
                        format!("tenant {:?} already exists ({status})", spec.slug)
                    });
                    report.duplicate = true;
                }
                match known.templates.get(&spec.template) {
                    None => report
                        .errors
                        .push(format!("template {:?} does not exist", spec.template)),
                    Some(true) if !known.timescaledb_installed => report.errors.push(format!(
                        "template {:?} needs the timescaledb extension, which is not installed",
                        spec.template
                    )),
                    Some(_) => {}
                }
                if spec.options.isolation == Isolation::Shared
                    && known.templates.contains_key(&spec.template)
                    && !known.shared_templates.contains(&spec.template)
                {
                    report.errors.push(format!(
                        "isolation \"shared\" needs a template with shared_tables; {:?} has none",
                        spec.template
                    ));
                }
                seen.entry(spec.slug.clone()).or_insert(ordinal);
                report.spec = Some(spec);
            }
        }
        out.push(report);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn known() -> Known {
        Known {
            taken: HashMap::from([
                ("acme".to_string(), "active".to_string()),
                ("gone".to_string(), "dropped".to_string()),
            ]),
            templates: HashMap::from([
                ("default".to_string(), false),
                ("timeseries".to_string(), true),
            ]),
            timescaledb_installed: false,
            shared_templates: HashSet::from(["default".to_string()]),
        }
    }

    #[test]
    fn every_item_checked() {
        let items = json!([
            {"slug": "new1"},
            {"slug": "acme"},
            {"slug": "new1"},
            {"slug": "Bad!", "colour": 1},
            7,
            {"slug": "ts1", "template": "timeseries"},
            {"slug": "x1", "template": "nope"},
            {"slug": "gone"},
            {"slug": "sh1", "isolation": "shared"},
            {"slug": "sh2", "isolation": "shared", "template": "timeseries"}
        ]);
        let r = check_items(items.as_array().unwrap(), &known());
        assert!(r[0].valid());
        assert!(r[1].duplicate && r[1].errors[0].contains("already exists"));
        assert!(!r[2].duplicate && r[2].errors[0].contains("repeats item 1"));
        assert_eq!(r[3].errors.len(), 2, "{:?}", r[3]);
        assert_eq!(r[4].errors, ["must be a JSON object"]);
        assert!(r[5].errors[0].contains("timescaledb"));
        assert!(r[6].errors[0].contains("does not exist"));
        assert!(r[7].errors[0].contains("dropped"));
        assert!(r[8].valid());
        assert!(
            r[9].errors.iter().any(|e| e.contains("shared_tables")),
            "{:?}",
            r[9]
        );
        assert_eq!(r.iter().filter(|r| r.valid()).count(), 2);
    }

    #[test]
    fn names_for_lookup() {
        let items = json!([{"slug": "a"}, {"slug": "b", "template": "trading"}, {"x": 1}]);
        let (slugs, templates) = names_in(items.as_array().unwrap());
        assert_eq!(slugs, ["a", "b"]);
        assert_eq!(templates, ["default", "trading"]);
    }

    #[test]
    fn not_an_array() {
        assert!(items_of(&json!({"slug": "a"}))
            .unwrap_err()
            .to_string()
            .contains("an object"));
    }
}
