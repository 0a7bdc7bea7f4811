//! Health scores, of the cluster view (`health()`) and of one tenant
//! (`health(tenant)`): 100, less what each problem found takes off, never
//! below 0, with each problem's reason.

use serde::Deserialize;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Score {
    problems: Vec<(u32, String)>,
}

impl Score {
    pub fn new() -> Self {
        Self::default()
    }

    /// A problem found: `by` points off, and why.
    pub fn lower(&mut self, by: u32, reason: impl Into<String>) {
        self.problems.push((by, reason.into()));
    }

    pub fn value(&self) -> u32 {
        100u32.saturating_sub(self.problems.iter().map(|p| p.0).sum())
    }

    pub fn reasons(&self) -> Vec<String> {
        self.problems.iter().map(|p| p.1.clone()).collect()
    }
}

/// What `health(tenant)` found of one tenant (sql/health.sql gathers it).
/// Sizes come already written as `pg_size_pretty` writes them.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct TenantFindings {
    pub status: String,
    /// When it was dropped, for a dropped tenant.
    pub dropped_at: Option<String>,
    /// The schema it should have and has not.
    pub schema_missing: Option<String>,
    /// The role that owns its schema when that is not this database's owner
    /// role: a copy restored from another database's dump, not yet handed
    /// over (`tenancy.after_restore`).
    pub foreign_owner: Option<String>,
    #[serde(default)]
    pub template: String,
    #[serde(default)]
    pub template_version: i32,
    /// Why its template version could not be built to compare, if it could not.
    pub reference_error: Option<String>,
    #[serde(default)]
    pub missing: u32,
    #[serde(default)]
    pub extra: u32,
    pub users: Option<i64>,
    pub max_users: Option<i64>,
    pub size_bytes: Option<i64>,
    pub max_storage_bytes: Option<i64>,
    pub size_pretty: Option<String>,
    pub max_storage_pretty: Option<String>,
    /// Since when its writes are refused (refresh_metrics found it over its
    /// storage quota).
    pub over_quota_since: Option<String>,
}

/// The score of one tenant: what its status, its drift from its template
/// version and its quotas take off.
pub fn tenant_score(f: &TenantFindings) -> Score {
    let mut s = Score::new();
    if let Some(at) = &f.dropped_at {
        s.lower(100, format!("the tenant was dropped at {at}"));
        return s;
    }
    if let Some(schema) = &f.schema_missing {
        s.lower(100, format!("schema {schema} is missing"));
        return s;
    }
    if let Some(role) = &f.foreign_owner {
        s.lower(
            50,
            format!("its schema is owned by {role}, not this database's owner role: run tenancy.after_restore()"),
        );
        return s;
    }
    if f.status != "active" {
        s.lower(40, format!("the tenant is {}", f.status));
    }
    if let Some(e) = &f.reference_error {
        s.lower(
            10,
            format!("its template version could not be built to compare: {e}"),
        );
    }
    if f.missing > 0 {
        s.lower(
            (10 * f.missing).min(50),
            format!(
                "{} object(s) of template {} version {} missing",
                f.missing, f.template, f.template_version
            ),
        );
    }
    if f.extra > 0 {
        s.lower(
            (2 * f.extra).min(10),
            format!("{} object(s) not in the template", f.extra),
        );
    }
    if let (Some(users), Some(max)) = (f.users, f.max_users) {
        if users > max {
            s.lower(20, format!("{users} users, over its quota of {max}"));
        }
    }
    if let Some(since) = &f.over_quota_since {
        s.lower(
            30,
            format!("its writes are refused since {since}: its storage is over its quota"),
        );
    } else if let (Some(size), Some(max)) = (f.size_bytes, f.max_storage_bytes) {
        if size > max {
            s.lower(
                20,
                format!(
                    "storage {} is over its quota of {} (writes refused from the next refresh_metrics)",
                    f.size_pretty.as_deref().unwrap_or("?"),
                    f.max_storage_pretty.as_deref().unwrap_or("?")
                ),
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn active() -> TenantFindings {
        TenantFindings {
            status: "active".into(),
            template: "default".into(),
            template_version: 1,
            ..Default::default()
        }
    }

    #[test]
    fn refused_writes_lower_it_once() {
        let f = TenantFindings {
            size_bytes: Some(10),
            max_storage_bytes: Some(5),
            over_quota_since: Some("2026-12-05 07:00:00+00".into()),
            ..active()
        };
        let s = tenant_score(&f);
        assert_eq!(s.value(), 70);
        assert!(s.reasons()[0].contains("writes are refused since 2026-12-05"));
    }

    #[test]
    fn a_clean_tenant_scores_100() {
        let s = tenant_score(&active());
        assert_eq!((s.value(), s.reasons().len()), (100, 0));
    }

    #[test]
    fn drift_and_quotas_lower_it_with_caps() {
        let f = TenantFindings {
            missing: 1,
            extra: 1,
            users: Some(3),
            max_users: Some(2),
            ..active()
        };
        let s = tenant_score(&f);
        assert_eq!(s.value(), 68);
        assert_eq!(
            s.reasons(),
            vec![
                "1 object(s) of template default version 1 missing",
                "1 object(s) not in the template",
                "3 users, over its quota of 2"
            ]
        );
        let many = TenantFindings {
            missing: 9,
            extra: 9,
            ..active()
        };
        assert_eq!(tenant_score(&many).value(), 40);
    }

    #[test]
    fn dropped_or_schemaless_is_zero_with_one_reason() {
        let f = TenantFindings {
            status: "dropped".into(),
            dropped_at: Some("2026-12-04".into()),
            ..active()
        };
        let s = tenant_score(&f);
        assert_eq!((s.value(), s.reasons().len()), (0, 1));
        let f = TenantFindings {
            schema_missing: Some("tenant_x".into()),
            ..active()
        };
        assert_eq!(
            tenant_score(&f).reasons(),
            vec!["schema tenant_x is missing"]
        );
        let f = TenantFindings {
            foreign_owner: Some("tenancy_owner_1".into()),
            ..active()
        };
        assert_eq!(
            (tenant_score(&f).value(), tenant_score(&f).reasons().len()),
            (50, 1)
        );
    }

    #[test]
    fn never_below_zero() {
        let mut s = Score::new();
        s.lower(60, "a");
        s.lower(60, "b");
        assert_eq!(s.value(), 0);
        let f = TenantFindings {
            status: "suspended".into(),
            missing: 9,
            extra: 9,
            users: Some(3),
            max_users: Some(1),
            size_bytes: Some(2),
            max_storage_bytes: Some(1),
            ..active()
        };
        assert_eq!(tenant_score(&f).value(), 0);
    }
}
