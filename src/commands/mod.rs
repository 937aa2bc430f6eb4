//! One module per group of subcommands; `main.rs` parses the command line and calls these.

pub mod import_original;
pub mod maintain;
pub mod migrate;
pub mod outbox;
pub mod pause;
pub mod provision;
pub mod queues;
pub mod reputation;
pub mod run;
pub mod suppression;
