//! SQL identifiers and literals built from values we do not control.
//! Every identifier that reaches SQL text goes through `quote_ident`.

/// Quotes an identifier the way PostgreSQL's `quote_ident` does when it must:
/// always, so a name that happens to be a keyword stays a name.
pub fn quote_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// `schema.name`, both quoted.
pub fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

/// Quotes a string literal as PostgreSQL's `quote_literal` does: a value
/// with a backslash becomes an `E'...'` string with the backslash doubled,
/// so it reads the same whatever a session set standard_conforming_strings to.
pub fn quote_literal(value: &str) -> String {
    let quoted = value.replace('\'', "''");
    if value.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    }
}

/// A lower-case name that needs no quoting: `^[a-z_][a-z0-9_]*$`, at most 63 bytes.
pub fn is_simple_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z' | '_'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
        && name.len() <= 63
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("acme"), "\"acme\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(qualified("s", "t"), "\"s\".\"t\"");
        assert_eq!(quote_literal("o'neil"), "'o''neil'");
        assert_eq!(quote_literal("a\\'b"), "E'a\\\\''b'");
    }

    #[test]
    fn simple_names() {
        assert!(is_simple_name("tenant_"));
        assert!(is_simple_name("_x1"));
        assert!(!is_simple_name("1x"));
        assert!(!is_simple_name("Ab"));
        assert!(!is_simple_name(""));
        assert!(!is_simple_name(&"a".repeat(64)));
    }
}
