//! Sources: what a source does on its own (outside the tree's settle path).

pub fn dead_lettered_on_receive(queue: &str, id: i64) {
    tracing::warn!(queue, id, "dead-lettered after too many receives");
    metrics::counter!("datamailer_messages_dead_lettered_total", "queue" => queue.to_string())
        .increment(1);
}
