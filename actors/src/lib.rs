//! The queue trees' handlers: what each queue does with its messages. The runtime owns the
//! plumbing (polling, retries, dead letters, supervision); a handler owns the domain effects.
//!
//! One module per queue (`transactional`, `campaign`, `ses_webhooks`, `email_events`), plus the
//! client-webhook dispatcher ([`webhooks`], an outbox worked by a maintenance task) and the
//! account-wide [`reputation`] guard. Each plugs into the runtime through [`registry`].

pub mod campaign;
pub mod email_events;
pub mod events;
pub mod registry;
pub mod reputation;
pub mod ses_webhooks;
pub mod transactional;
pub mod webhooks;

pub use transactional::{TransactionalHandler, TransactionalSettings};
