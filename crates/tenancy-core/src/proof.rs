//! The proof of a shared tenant's context that the Citus coordinator sends
//! to its worker nodes (src/citus/tenant_context.rs): the tenant's id and
//! whether it may write, with a MAC for each worker group, made with that
//! node's own key. `v1:<tenant>:<0|1>:<group>=<mac>,<group>=<mac>...`

use hmac::{Hmac, Mac};
use sha2::Sha256;

const VERSION: &str = "v1";

/// How many bytes of a MAC a proof carries (128 bits).
const MAC_BYTES: usize = 16;

/// What a proof says, once a node's key checked it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Context {
    pub tenant: [u8; 16],
    pub may_write: bool,
}

fn mac(key: &[u8], message: &str) -> String {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    m.update(message.as_bytes());
    m.finalize().into_bytes()[..MAC_BYTES]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The proof for `tenant` (a uuid's text), with a MAC for each of `keys`
/// (worker group, that node's key).
pub fn make(tenant: &str, may_write: bool, keys: &[(i32, String)]) -> String {
    let message = format!("{VERSION}:{tenant}:{}", u8::from(may_write));
    let macs: Vec<String> = keys
        .iter()
        .map(|(group, key)| format!("{group}={}", mac(key.as_bytes(), &message)))
        .collect();
    format!("{message}:{}", macs.join(","))
}

/// What `proof` says, if `key` (the key of the node of group `group`) made
/// its MAC for that group; None for anything else.
pub fn read(proof: &str, group: i32, key: &[u8]) -> Option<Context> {
    let (message, macs) = proof.rsplit_once(':')?;
    let mut parts = message.split(':');
    let (version, tenant, write) = (parts.next()?, parts.next()?, parts.next()?);
    if version != VERSION || parts.next().is_some() {
        return None;
    }
    let mine = macs
        .split(',')
        .find_map(|m| m.split_once('=').filter(|(g, _)| g.parse() == Ok(group)))?
        .1;
    if !constant_time_eq(mine.as_bytes(), mac(key, message).as_bytes()) {
        return None;
    }
    Some(Context {
        tenant: crate::slug::uuid_bytes(tenant)?,
        may_write: match write {
            "1" => true,
            "0" => false,
            _ => return None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "07070707-0707-0707-0707-070707070707";
    const B: &str = "08080808-0808-0808-0808-080808080808";

    #[test]
    fn a_proof_reads_back_only_with_its_nodes_key() {
        let keys = vec![(1, "k1".to_string()), (2, "k2".to_string())];
        let p = make(A, true, &keys);
        let ctx = read(&p, 2, b"k2").unwrap();
        assert_eq!(ctx.tenant, [7; 16]);
        assert!(ctx.may_write);
        assert_eq!(read(&p, 2, b"k1"), None, "another node's key");
        assert_eq!(read(&p, 3, b"k2"), None, "a group it has no MAC for");
        assert_eq!(
            read(&p.replace(A, B), 2, b"k2"),
            None,
            "another tenant, same MACs"
        );
        let no_write = make(A, false, &keys);
        assert!(!read(&no_write, 1, b"k1").unwrap().may_write);
        assert_eq!(read(&no_write.replace(":0:", ":1:"), 1, b"k1"), None);
        assert_eq!(read("", 1, b"k1"), None);
        assert_eq!(read(&format!("v1:{A}:1:1=zz"), 1, b"k1"), None);
        assert_eq!(
            read(
                &format!("v2:{A}:1:{}", &p[p.rfind(':').unwrap() + 1..]),
                1,
                b"k1"
            ),
            None
        );
    }
}
