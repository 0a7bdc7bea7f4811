//! Pure logic of the `tenancy` extension: everything that can be decided
//! without a PostgreSQL server (slug rules, template specs and their DDL,
//! provision options, error kinds and their SQLSTATEs). The extension crate
//! only adapts this to SQL, so these rules are unit-tested with `cargo test`.

pub mod batch_items;
pub mod batch_options;
pub mod error;
pub mod health;
pub mod ident;
pub mod options;
pub mod proof;
pub mod relation_file;
pub mod retry;
pub mod slug;
pub mod template;

pub use error::{Problem, TenancyError};
