//! Files of a relation in a database's directory, as PostgreSQL names them.

/// `<filenode>[_<fork>][.<segment>]` -> the filenode, and whether the file is
/// of the main fork; anything else (`pg_filenode.map`, `PG_VERSION`, temporary
/// relations' `t...` files) -> None.
pub fn parse_file_name(name: &str) -> Option<(u32, bool)> {
    let end = name
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(name.len());
    let filenode = name[..end].parse().ok()?;
    match name.as_bytes().get(end) {
        None | Some(b'.') => Some((filenode, true)),
        Some(b'_') => Some((filenode, false)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::parse_file_name;

    #[test]
    fn file_names() {
        assert_eq!(parse_file_name("16384"), Some((16384, true)));
        assert_eq!(parse_file_name("16384.2"), Some((16384, true)));
        assert_eq!(parse_file_name("16384_fsm"), Some((16384, false)));
        assert_eq!(parse_file_name("16384_vm.1"), Some((16384, false)));
        assert_eq!(parse_file_name("PG_VERSION"), None);
        assert_eq!(parse_file_name("pg_filenode.map"), None);
        assert_eq!(parse_file_name("t3_16384"), None);
        assert_eq!(parse_file_name("16384x"), None);
    }
}
