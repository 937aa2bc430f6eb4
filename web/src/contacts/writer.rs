//! The contact upsert writer: `POST /api/contacts` persisted by group commit.
//!
//! One request's upsert is a handful of statements and a commit; the commit's WAL flush, not
//! the statements, caps a small pool at a few hundred upserts a second. The handler hands its
//! parsed upsert to a [`BatchWriter`] over [`ContactSink`], which writes every upsert waiting
//! in one transaction through the same set-based [`upsert::upsert`] the imports use: one call
//! per scope, so a batch of a thousand upserts in one scope costs what one costs, plus its rows.
//!
//! Two upserts of the same address in one batch are applied in arrival order (the second in a
//! later round of the same transaction), so each answer is what its request did, as if the
//! requests had been committed one by one. A failed batch is retried one upsert at a time by
//! the runtime writer, so one failing upsert fails only its own request.

use std::collections::{BTreeMap, HashSet};

use anyhow::Context;
use async_trait::async_trait;
use datamailer_runtime::writer::{BatchSink, BatchWriter, WriterSettings};
use sqlx::{Connection, PgPool};

use super::upsert::{self, ContactInput, Upserted};
use crate::held_connection::HeldConnection;

/// Most upserts in one transaction.
pub const MAX_BATCH: usize = 256;

/// One request's upsert.
#[derive(Debug, Clone)]
pub struct ContactUpsert {
    pub audience_id: i64,
    pub client_id: i64,
    pub input: ContactInput,
}

pub type ContactWriter = BatchWriter<ContactSink>;

/// Starts the writer (call inside a Tokio runtime).
pub fn start(db: PgPool) -> ContactWriter {
    BatchWriter::start(
        ContactSink {
            conn: HeldConnection::new(db),
        },
        WriterSettings {
            max_batch: MAX_BATCH,
            ..Default::default()
        },
    )
}

pub struct ContactSink {
    /// Kept while the writer is busy; given back when it idles or after an error.
    conn: HeldConnection,
}

/// The batch's upserts as calls of [`upsert::upsert`]: per scope (sorted, so concurrent
/// writers meet scopes in one order), rounds of distinct addresses in arrival order. Each call
/// lists its item indexes.
fn rounds(items: &[&ContactUpsert]) -> Vec<((i64, i64), Vec<usize>)> {
    let mut by_scope: BTreeMap<(i64, i64), Vec<Vec<usize>>> = BTreeMap::new();
    let mut seen: BTreeMap<(i64, i64), Vec<HashSet<&str>>> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        let scope = (item.audience_id, item.client_id);
        let rounds = by_scope.entry(scope).or_default();
        let sets = seen.entry(scope).or_default();
        let email = item.input.normalized.as_str();
        let round = sets
            .iter()
            .position(|s| !s.contains(email))
            .unwrap_or(sets.len());
        if round == sets.len() {
            sets.push(HashSet::new());
            rounds.push(Vec::new());
        }
        sets[round].insert(email);
        rounds[round].push(i);
    }
    by_scope
        .into_iter()
        .flat_map(|(scope, rounds)| rounds.into_iter().map(move |r| (scope, r)))
        .collect()
}

#[async_trait]
impl BatchSink for ContactSink {
    type Item = ContactUpsert;
    type Output = Upserted;
    type Key = ();

    fn name(&self) -> &'static str {
        "contact-upsert"
    }

    async fn write(&self, items: &[&ContactUpsert]) -> anyhow::Result<Vec<Upserted>> {
        let mut conn = self.conn.get("contact writer").await?;
        let mut tx = conn.begin().await.context("begin a contact batch")?;
        let mut outputs: Vec<Option<Upserted>> = vec![None; items.len()];
        for ((audience_id, client_id), indexes) in rounds(items) {
            let inputs: Vec<ContactInput> =
                indexes.iter().map(|&i| items[i].input.clone()).collect();
            let done = upsert::upsert(&mut tx, audience_id, client_id, &inputs)
                .await
                .context("upsert a contact batch")?;
            for (i, up) in indexes.into_iter().zip(done) {
                outputs[i] = Some(up);
            }
        }
        tx.commit().await.context("commit a contact batch")?;
        outputs
            .into_iter()
            .map(|o| o.context("an upsert of the batch had no result"))
            .collect()
    }

    async fn idle(&self) {
        self.conn.release().await;
    }

    async fn reset(&self) {
        self.conn.release().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contacts::upsert::SubscriptionChange;

    fn item(audience_id: i64, client_id: i64, email: &str) -> ContactUpsert {
        ContactUpsert {
            audience_id,
            client_id,
            input: ContactInput {
                email: email.into(),
                normalized: email.into(),
                subscription: SubscriptionChange::Subscribe,
                tags: Vec::new(),
                validation: None,
                suppression: [None; 3],
            },
        }
    }

    #[test]
    fn repeated_addresses_go_to_later_rounds_in_arrival_order_per_scope() {
        let items = [
            item(1, 2, "a@x"),
            item(1, 2, "b@x"),
            item(1, 2, "a@x"),
            item(1, 3, "a@x"),
            item(1, 2, "a@x"),
        ];
        let refs: Vec<&ContactUpsert> = items.iter().collect();
        assert_eq!(
            rounds(&refs),
            vec![
                ((1, 2), vec![0, 1]),
                ((1, 2), vec![2]),
                ((1, 2), vec![4]),
                ((1, 3), vec![3]),
            ]
        );
    }
}
