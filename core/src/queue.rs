//! The four queues: their names, contract names, how their trees run ([`QueueSpec`]) and the
//! environment variables that hold their SQS URLs. This is the one place those facts live:
//! `serve`, `worker`, `lambda`, `pause`, `dlq`, the metrics and `validate-infra` read them
//! here (the handlers are registered in `datamailer-actors`'s registry).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// How a queue's tree runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSpec {
    /// Handler workers per process; the reserved Lambda concurrency of the reference
    /// deployment.
    pub concurrency: usize,
    /// Messages per worker batch (`None`: the source's maximum: 10 on SQS, 50 embedded).
    pub batch_size: Option<usize>,
    /// The embedded queue's visibility timeout (SQS queues carry their own).
    pub visibility_timeout: Duration,
    /// Receives before a failing message is dead-lettered (the SQS redrive policy's
    /// `maxReceiveCount` is the same number).
    pub max_receives: u32,
    /// Whether its handler sends email (needs the SES client and the limiter).
    pub needs_sender: bool,
}

/// One of the product's work queues. The queue name doubles as its contract name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QueueName {
    TransactionalEmail,
    CampaignEmail,
    SesWebhooks,
    EmailEvents,
}

impl QueueName {
    pub const ALL: [QueueName; 4] = [
        QueueName::TransactionalEmail,
        QueueName::CampaignEmail,
        QueueName::SesWebhooks,
        QueueName::EmailEvents,
    ];

    /// Canonical name, also the `contract` field of the queue's messages.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueName::TransactionalEmail => "transactional-email",
            QueueName::CampaignEmail => "campaign-email",
            QueueName::SesWebhooks => "ses-webhooks",
            QueueName::EmailEvents => "email-events",
        }
    }

    /// How this queue's tree runs.
    pub fn spec(self) -> QueueSpec {
        let base = QueueSpec {
            concurrency: 1,
            batch_size: None,
            visibility_timeout: Duration::from_secs(180),
            max_receives: 5,
            needs_sender: false,
        };
        match self {
            QueueName::TransactionalEmail => QueueSpec {
                concurrency: 4,
                needs_sender: true,
                ..base
            },
            QueueName::CampaignEmail => QueueSpec {
                concurrency: 2,
                needs_sender: true,
                ..base
            },
            // Events are small and applied in bulk by the tree's writers: large batches fill
            // them (SQS still receives at most 10 at a time).
            QueueName::SesWebhooks => QueueSpec {
                concurrency: 2,
                batch_size: Some(200),
                ..base
            },
            QueueName::EmailEvents => base,
        }
    }

    /// Reserved Lambda concurrency of the reference deployment.
    pub fn default_concurrency(self) -> usize {
        self.spec().concurrency
    }

    #[cfg(test)]
    fn env_stem(self) -> &'static str {
        match self {
            QueueName::TransactionalEmail => "SQS_TRANSACTIONAL_EMAIL",
            QueueName::CampaignEmail => "SQS_CAMPAIGN_EMAIL",
            QueueName::SesWebhooks => "SQS_SES_WEBHOOKS",
            QueueName::EmailEvents => "SQS_EMAIL_EVENTS",
        }
    }

    /// Environment variable holding the queue URL.
    pub fn sqs_url_env(self) -> &'static str {
        match self {
            QueueName::TransactionalEmail => "SQS_TRANSACTIONAL_EMAIL_QUEUE_URL",
            QueueName::CampaignEmail => "SQS_CAMPAIGN_EMAIL_QUEUE_URL",
            QueueName::SesWebhooks => "SQS_SES_WEBHOOKS_QUEUE_URL",
            QueueName::EmailEvents => "SQS_EMAIL_EVENTS_QUEUE_URL",
        }
    }

    /// Environment variable holding the UUID of the Lambda event source mapping that feeds
    /// this queue to its worker function (`datamailer pause` disables it).
    pub fn event_source_mapping_env(self) -> &'static str {
        match self {
            QueueName::TransactionalEmail => "DATAMAILER_TRANSACTIONAL_EMAIL_EVENT_SOURCE_MAPPING",
            QueueName::CampaignEmail => "DATAMAILER_CAMPAIGN_EMAIL_EVENT_SOURCE_MAPPING",
            QueueName::SesWebhooks => "DATAMAILER_SES_WEBHOOKS_EVENT_SOURCE_MAPPING",
            QueueName::EmailEvents => "DATAMAILER_EMAIL_EVENTS_EVENT_SOURCE_MAPPING",
        }
    }

    /// Environment variable holding the dead-letter queue URL.
    pub fn sqs_dlq_url_env(self) -> &'static str {
        match self {
            QueueName::TransactionalEmail => "SQS_TRANSACTIONAL_EMAIL_DLQ_URL",
            QueueName::CampaignEmail => "SQS_CAMPAIGN_EMAIL_DLQ_URL",
            QueueName::SesWebhooks => "SQS_SES_WEBHOOKS_DLQ_URL",
            QueueName::EmailEvents => "SQS_EMAIL_EVENTS_DLQ_URL",
        }
    }
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for QueueName {
    type Err = String;

    /// Accepts the canonical names plus the original CLI's short aliases
    /// (`transactional`, `campaign`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = s.trim();
        if let Some(queue) = QueueName::ALL.into_iter().find(|q| q.as_str() == name) {
            return Ok(queue);
        }
        match name {
            "transactional" => Ok(QueueName::TransactionalEmail),
            "campaign" => Ok(QueueName::CampaignEmail),
            _ => {
                let valid: Vec<&str> = QueueName::ALL.iter().map(|q| q.as_str()).collect();
                Err(format!(
                    "unknown queue '{s}'; expected one of {} (or the aliases transactional, campaign)",
                    valid.join(", ")
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for queue in QueueName::ALL {
            assert_eq!(queue.as_str().parse::<QueueName>(), Ok(queue));
            assert_eq!(queue.to_string(), queue.as_str());
        }
    }

    #[test]
    fn aliases_parse() {
        assert_eq!("transactional".parse(), Ok(QueueName::TransactionalEmail));
        assert_eq!("campaign".parse(), Ok(QueueName::CampaignEmail));
    }

    #[test]
    fn unknown_name_lists_valid_names() {
        let err = "nope".parse::<QueueName>().unwrap_err();
        for queue in QueueName::ALL {
            assert!(err.contains(queue.as_str()), "{err}");
        }
    }

    #[test]
    fn env_names_follow_one_pattern() {
        for queue in QueueName::ALL {
            assert_eq!(
                queue.sqs_url_env(),
                format!("{}_QUEUE_URL", queue.env_stem())
            );
            assert_eq!(
                queue.sqs_dlq_url_env(),
                format!("{}_DLQ_URL", queue.env_stem())
            );
        }
        assert_eq!(
            QueueName::TransactionalEmail.sqs_dlq_url_env(),
            "SQS_TRANSACTIONAL_EMAIL_DLQ_URL"
        );
    }

    #[test]
    fn default_concurrency_matches_reference_deployment() {
        let got: Vec<usize> = QueueName::ALL
            .iter()
            .map(|q| q.default_concurrency())
            .collect();
        assert_eq!(got, vec![4, 2, 2, 1]);
    }
}
