//! Error kinds shared by every SQL entry point, each with its SQLSTATE.

use std::fmt;

/// One thing wrong with one input, e.g. one item of a batch or one key of a spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where the problem is: `"slug"`, `"tables[2]"`, `"item 3"`.
    pub at: String,
    pub reason: String,
}

impl Problem {
    pub fn new(at: impl Into<String>, reason: impl Into<String>) -> Self {
        Problem {
            at: at.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.reason)
    }
}

/// Renders problems one per line, for an error's DETAIL.
pub fn problems_detail(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenancyError {
    #[error("invalid tenant slug {slug:?}: {reason}")]
    InvalidSlug { slug: String, reason: String },

    #[error("{0}")]
    InvalidArgument(String),

    #[error("invalid options: {}", problems_inline(.0))]
    InvalidOptions(Vec<Problem>),

    #[error("template {name:?} is not valid ({} problem{})", .problems.len(), if .problems.len() == 1 { "" } else { "s" })]
    InvalidTemplateSpec {
        name: String,
        problems: Vec<Problem>,
    },

    #[error("tenant {0:?} already exists")]
    DuplicateTenant(String),

    #[error("tenant {slug:?} already exists with different settings")]
    TenantMismatch { slug: String, differences: String },

    #[error("schema {schema:?} already belongs to tenant {holder:?}")]
    SchemaTaken { schema: String, holder: String },

    #[error("domain {domain:?} is already used by tenant {holder:?}")]
    DuplicateDomain { domain: String, holder: String },

    #[error("template {0:?} does not exist")]
    UnknownTemplate(String),

    #[error("tenant {0:?} does not exist")]
    UnknownTenant(String),

    #[error("template {template:?} needs the {extension} extension, which is not installed in this database")]
    MissingExtension { template: String, extension: String },

    #[error("tenant {slug:?} is {status}; {action} is not allowed")]
    WrongStatus {
        slug: String,
        status: String,
        action: String,
    },

    #[error("{0}")]
    NotSupported(String),
}

fn problems_inline(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

impl TenancyError {
    /// The SQLSTATE this error is raised with.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            TenancyError::InvalidSlug { .. }
            | TenancyError::InvalidArgument(_)
            | TenancyError::InvalidOptions(_)
            | TenancyError::InvalidTemplateSpec { .. } => "22023",
            TenancyError::DuplicateTenant(_)
            | TenancyError::DuplicateDomain { .. }
            | TenancyError::TenantMismatch { .. }
            | TenancyError::SchemaTaken { .. } => "23505",
            TenancyError::UnknownTemplate(_) | TenancyError::UnknownTenant(_) => "42704",
            TenancyError::MissingExtension { .. } | TenancyError::WrongStatus { .. } => "55000",
            TenancyError::NotSupported(_) => "0A000",
        }
    }

    /// Extra lines for the error's DETAIL, when there is more than the message.
    pub fn detail(&self) -> Option<String> {
        match self {
            TenancyError::InvalidTemplateSpec { problems, .. } => Some(problems_detail(problems)),
            TenancyError::TenantMismatch { differences, .. } => Some(differences.clone()),
            _ => None,
        }
    }

    /// What the user can do about it, for the error's HINT.
    pub fn hint(&self) -> Option<String> {
        match self {
            TenancyError::InvalidSlug { .. } => Some(
                "A slug is 1 to 48 characters: a lowercase letter, then lowercase letters, digits or underscores."
                    .into(),
            ),
            TenancyError::MissingExtension { extension, .. } => Some(format!(
                "Install it first: CREATE EXTENSION {extension};"
            )),
            TenancyError::UnknownTemplate(_) => {
                Some("See SELECT name, version FROM tenancy.templates;".into())
            }
            TenancyError::DuplicateTenant(_) => Some(
                "Pass options => '{\"if_not_exists\": true}' to get the existing tenant instead."
                    .into(),
            ),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates() {
        assert_eq!(
            TenancyError::DuplicateTenant("a".into()).sqlstate(),
            "23505"
        );
        assert_eq!(
            TenancyError::UnknownTemplate("a".into()).sqlstate(),
            "42704"
        );
        let missing = TenancyError::MissingExtension {
            template: "timeseries".into(),
            extension: "timescaledb".into(),
        };
        assert_eq!(missing.sqlstate(), "55000");
        assert!(missing.to_string().contains("timescaledb"));
        assert_eq!(
            TenancyError::InvalidSlug {
                slug: "X".into(),
                reason: "r".into()
            }
            .sqlstate(),
            "22023"
        );
    }

    #[test]
    fn spec_problems_in_detail() {
        let e = TenancyError::InvalidTemplateSpec {
            name: "t".into(),
            problems: vec![
                Problem::new("tables", "missing"),
                Problem::new("x", "unknown key"),
            ],
        };
        assert_eq!(e.to_string(), "template \"t\" is not valid (2 problems)");
        assert_eq!(e.detail().unwrap(), "tables: missing\nx: unknown key");
    }
}
