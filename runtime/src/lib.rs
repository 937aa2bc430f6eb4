//! The generic worker runtime: one supervised actor tree per queue, the sources it reads
//! (SQS, a Lambda batch, the embedded Postgres queue), the rate-limited sender, the Postgres
//! pool with its hard connection cap, and metrics. It knows queues, batches, SES and Postgres,
//! but nothing about campaigns or contacts: that lives in the handlers of `datamailer-actors`.

pub mod backoff;
pub mod control;
pub mod db;
pub mod events;
pub mod lambda;
pub mod ledger;
pub mod mailer;
pub mod maintenance;
pub mod outbound;
pub mod pg_tls;
pub mod producer;
pub mod source;
pub mod telemetry;
pub mod tree;
pub mod writer;

pub use source::{Delivery, Outcome};
pub use tree::{
    Handler, HandlerContext, QueueTree, RestartPolicy, TreeExit, TreeSpec, TreeStopper,
};
