//! Pure domain logic for datamailer: queue contracts, delivery rules, template
//! rendering, API keys and request validation. Nothing here does I/O, so the web
//! service, the workers and the tests all share one definition of the rules.

pub mod apikey;
pub mod campaign;
pub mod contracts;
pub mod email;
pub mod feedback;
pub mod fields;
pub mod pyjson;
pub mod queue;
pub mod reasons;
pub mod render;
pub mod ses_events;
pub mod slug;
pub mod sns;
pub mod time;
pub mod tracking;
pub mod transactional;
pub mod webhooks;
