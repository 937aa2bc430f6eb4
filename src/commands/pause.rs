//! `datamailer pause` / `resume`: stop and restart a queue's workers (processes and Lambda).

use anyhow::Context;
use datamailer_core::queue::QueueName;

use crate::commands::queues::small_db;
use crate::config::Config;
use crate::mappings;

/// `datamailer pause --queue Q`: the queue's workers (processes and Lambda) take nothing new
/// until `datamailer resume --queue Q`; in-flight work finishes.
pub async fn pause(config: Config, queue: String, reason: String) -> anyhow::Result<()> {
    let queue: QueueName = queue
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--queue: {e}"))?;
    let db = small_db(&config)?;
    let at = datamailer_runtime::control::pause(&db, queue.as_str(), &reason).await?;
    println!(
        "paused {queue} (since {}); workers stop receiving within {} s. Resume with: datamailer resume --queue {queue}",
        datamailer_core::time::iso(at),
        (datamailer_runtime::control::PAUSE_CACHE_TTL + datamailer_runtime::control::PAUSE_RECHECK)
            .as_secs()
    );
    let Some(uuid) = config.event_source_mappings.get(&queue) else {
        return Ok(());
    };
    let lambda = mappings::client(&config).await;
    match mappings::disable(&lambda, uuid).await {
        Ok(true) => {
            datamailer_runtime::control::note_disabled_mapping(&db, queue.as_str(), uuid).await?;
            println!("disabled the Lambda event source mapping {uuid}; resume enables it again");
        }
        Ok(false) => println!(
            "the Lambda event source mapping {uuid} was already disabled; resume leaves it disabled"
        ),
        Err(e) => anyhow::bail!(
            "{queue} is paused, but its Lambda event source mapping {uuid} is still enabled ({e:#}); \
             Lambda hands its records back and they reach the DLQ after 5 receives. Disable it: \
             aws lambda update-event-source-mapping --uuid {uuid} --no-enabled"
        ),
    }
    Ok(())
}

pub async fn resume(config: Config, queue: String) -> anyhow::Result<()> {
    let queue: QueueName = queue
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--queue: {e}"))?;
    let db = small_db(&config)?;
    let Some(resumed) = datamailer_runtime::control::resume(&db, queue.as_str()).await? else {
        println!("{queue} was not paused");
        return Ok(());
    };
    println!("resumed {queue}");
    let uuid = resumed.disabled_mapping;
    if !uuid.is_empty() {
        let lambda = mappings::client(&config).await;
        mappings::enable(&lambda, &uuid).await.with_context(|| {
            format!(
                "{queue} is resumed, but its Lambda event source mapping {uuid} is still disabled; \
                 enable it: aws lambda update-event-source-mapping --uuid {uuid} --enabled"
            )
        })?;
        println!("enabled the Lambda event source mapping {uuid}");
    }
    Ok(())
}

/// `datamailer pause --list`: every paused queue.
pub async fn paused(config: Config) -> anyhow::Result<()> {
    let db = small_db(&config)?;
    let rows = datamailer_runtime::control::paused_queues(&db).await?;
    for (queue, at, reason) in &rows {
        println!("{queue}\t{}\t{reason}", datamailer_core::time::iso(*at));
    }
    if rows.is_empty() {
        println!("no queue is paused");
    }
    Ok(())
}
