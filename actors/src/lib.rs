//! The queue trees' handlers: what each queue does with its messages. The runtime owns the
//! plumbing (polling, retries, dead letters, supervision); a handler owns the domain effects.
//!
//! Today: `transactional-email`. The campaign, ses-webhooks and email-events handlers come with
//! their own capabilities and plug into the same runtime unchanged, through [`registry`].

pub mod registry;
pub mod transactional;

pub use transactional::{TransactionalHandler, TransactionalSettings};
