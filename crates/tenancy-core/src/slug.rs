//! Tenant slugs: `^[a-z][a-z0-9_]{0,47}$`, no `pg_` prefix, no reserved word.
//! A slug becomes part of schema and role names, so the rules keep it a plain
//! identifier that can never need quoting or collide with system objects.

use crate::TenancyError;

pub const MAX_SLUG_LEN: usize = 48;

/// Names a slug may not take: PostgreSQL's reserved key words, and names of
/// schemas and roles that exist in every database or that we use ourselves.
const RESERVED: &[&str] = &[
    // our own and PostgreSQL's schemas and roles
    "public",
    "tenancy",
    "tenancy_admin",
    "information_schema",
    "postgres",
    "template",
    "template0",
    "template1",
    "shared",
    "admin",
    "root",
    "system",
    "none",
    // PostgreSQL reserved key words (appendix C, column "PostgreSQL": reserved)
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "both",
    "case",
    "cast",
    "check",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "false",
    "fetch",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "group",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "intersect",
    "into",
    "is",
    "isnull",
    "join",
    "lateral",
    "leading",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "natural",
    "not",
    "notnull",
    "null",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "outer",
    "overlaps",
    "placing",
    "primary",
    "references",
    "returning",
    "right",
    "select",
    "session_user",
    "similar",
    "some",
    "symmetric",
    "system_user",
    "table",
    "tablesample",
    "then",
    "to",
    "trailing",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
];

fn invalid(slug: &str, reason: &str) -> TenancyError {
    TenancyError::InvalidSlug {
        slug: slug.to_string(),
        reason: reason.to_string(),
    }
}

/// Checks a slug; the error says which rule it broke.
pub fn validate_slug(slug: Option<&str>) -> Result<&str, TenancyError> {
    let Some(slug) = slug else {
        return Err(TenancyError::InvalidArgument(
            "tenant slug must not be null".into(),
        ));
    };
    if slug.is_empty() {
        return Err(invalid(slug, "it is empty"));
    }
    if slug.chars().count() > MAX_SLUG_LEN {
        return Err(invalid(
            slug,
            &format!("it is longer than {MAX_SLUG_LEN} characters"),
        ));
    }
    let first = slug.chars().next().unwrap_or(' ');
    if !first.is_ascii_lowercase() {
        return Err(invalid(slug, "it must start with a lowercase letter (a-z)"));
    }
    if let Some(bad) = slug
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
    {
        return Err(invalid(
            slug,
            &format!("character {bad:?} is not allowed (only a-z, 0-9 and _)"),
        ));
    }
    if slug.starts_with("pg_") {
        return Err(invalid(slug, "the pg_ prefix is reserved for PostgreSQL"));
    }
    if RESERVED.contains(&slug) {
        return Err(invalid(slug, "it is a reserved name"));
    }
    Ok(slug)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(slug: &str) -> String {
        match validate_slug(Some(slug)) {
            Err(TenancyError::InvalidSlug { reason, .. }) => reason,
            other => panic!("{slug:?} was not rejected as a slug: {other:?}"),
        }
    }

    #[test]
    fn accepts_plain_slugs() {
        for ok in ["acme", "a", "acme_corp", "t1", "x_2_y", &"a".repeat(48)] {
            assert_eq!(validate_slug(Some(ok)).unwrap(), ok);
        }
    }

    #[test]
    fn rejects_sql_fragments_and_quotes() {
        for bad in [
            "acme; drop table x",
            "acme'--",
            "a\"b",
            "a b",
            "x); DROP SCHEMA public CASCADE; --",
            "a.b",
            "a-b",
            "a\\",
            "a\0b",
            "a\nb",
        ] {
            assert!(rejected(bad).contains("not allowed"), "{bad:?}");
        }
        assert!(rejected("$1").contains("start with"));
        assert!(rejected("'; DROP TABLE t; --").contains("start with"));
    }

    #[test]
    fn rejects_length_case_unicode_digit() {
        assert!(rejected(&"a".repeat(49)).contains("longer"));
        assert!(rejected(&"a".repeat(64)).contains("longer"));
        assert!(rejected(&"a".repeat(1000)).contains("longer"));
        assert!(rejected("Acme").contains("start with a lowercase"));
        assert!(rejected("acME").contains("not allowed"));
        assert!(rejected("acmé").contains("not allowed"));
        assert!(rejected("ácme").contains("start with"));
        assert!(rejected("租户").contains("start with"));
        assert!(rejected("a\u{200b}").contains("not allowed"));
        assert!(rejected("1acme").contains("start with"));
        assert!(rejected("_acme").contains("start with"));
    }

    #[test]
    fn rejects_reserved() {
        assert!(rejected("pg_acme").contains("pg_"));
        assert!(rejected("pg_").contains("pg_"));
        for word in [
            "public",
            "tenancy",
            "information_schema",
            "select",
            "user",
            "table",
        ] {
            assert!(rejected(word).contains("reserved"), "{word}");
        }
        // a reserved word inside a slug is fine: it never stands alone in SQL
        assert!(validate_slug(Some("user_1")).is_ok());
        assert!(validate_slug(Some("pgx")).is_ok());
    }

    #[test]
    fn rejects_empty_and_null() {
        assert!(rejected("").contains("empty"));
        assert_eq!(
            validate_slug(None).unwrap_err().sqlstate(),
            "22023",
            "NULL slug"
        );
    }
}

/// A tenant argument that is an id: a uuid in its canonical text form
/// (8-4-4-4-12 hex digits), the rule `tenancy._uuid_or_null` applies in SQL.
/// A slug has no hyphen, so it is never taken for one.
pub fn canonical_uuid(text: &str) -> Option<[u8; 16]> {
    let b = text.as_bytes();
    let hyphens_right = b.len() == 36 && [8, 13, 18, 23].iter().all(|&i| b[i] == b'-');
    if hyphens_right {
        uuid_bytes(text)
    } else {
        None
    }
}

/// The 16 bytes of a uuid written as 32 hex digits, hyphens anywhere
/// (what `tenancy.tenant_id` holds); `None` for anything else.
pub fn uuid_bytes(text: &str) -> Option<[u8; 16]> {
    let hex: Vec<u8> = text.bytes().filter(|b| *b != b'-').collect();
    if hex.len() != 32 || !hex.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).expect("a hex digit") as u8;
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        out[i] = digit(pair[0]) << 4 | digit(pair[1]);
    }
    Some(out)
}

#[cfg(test)]
mod uuid_tests {
    use super::*;

    #[test]
    fn only_the_canonical_form_is_an_id() {
        let id = "0123abcd-4567-89ab-cdef-0123456789AB";
        assert_eq!(canonical_uuid(id).unwrap()[0], 0x01);
        assert_eq!(canonical_uuid(id).unwrap()[15], 0xab);
        assert_eq!(canonical_uuid(&"-".repeat(36)), None);
        assert_eq!(canonical_uuid(&"a".repeat(36)), None);
        assert_eq!(canonical_uuid("+123abcd-4567-89ab-cdef-0123456789ab"), None);
        assert_eq!(canonical_uuid("0123abcd456789abcdef0123456789ab"), None);
        assert!(uuid_bytes("0123abcd456789abcdef0123456789ab").is_some());
    }
}
