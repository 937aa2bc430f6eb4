//! The queue trees' handlers: what each queue does with its messages. The runtime owns the
//! plumbing (polling, retries, dead letters, supervision); a handler owns the domain effects.
//!
//! Today: `transactional-email`, and the client-webhook dispatcher ([`webhooks`], an outbox
//! worked by a maintenance task). The campaign, ses-webhooks and email-events handlers come with
//! their own capabilities and plug into the same runtime unchanged, through [`registry`].

pub mod campaign;
pub mod email_events;
pub mod events;
pub mod registry;
pub mod transactional;
pub mod webhooks;

pub use transactional::{TransactionalHandler, TransactionalSettings};
