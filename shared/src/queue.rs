//! Publishing to SQS with `SendMessageBatch`: entries are packed into batches of at most ten and
//! at most [`MAX_BATCH_BYTES`], sent in order, and entries SQS fails are retried with jittered
//! exponential backoff. The call succeeds only when every entry is on the queue.
//!
//! Ordering: batches go out one after another, and a batch's failed entries are retried before
//! the next batch is sent, so within a FIFO group the queue order is the input order. The one
//! exception SQS allows is an entry that fails while a later entry of the same group in the same
//! batch succeeds; consumers sort a group's records by provider timestamp for that reason.

use std::time::Duration;

use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use backon::{BackoffBuilder, ExponentialBuilder};

/// SQS limit on entries per batch.
pub const MAX_BATCH_ENTRIES: usize = 10;
/// SQS limit on the total size of one batch (and of one message).
pub const MAX_BATCH_BYTES: usize = 256 * 1024;

/// One message to publish.
#[derive(Debug, Clone)]
pub struct OutgoingMessage {
    pub body: String,
    /// FIFO queues only.
    pub group_id: Option<String>,
    /// FIFO queues only.
    pub dedup_id: Option<String>,
    /// String message attributes (at most 10).
    pub attributes: Vec<(&'static str, String)>,
}

impl OutgoingMessage {
    fn size(&self) -> usize {
        self.body.len()
            + self
                .attributes
                .iter()
                .map(|(k, v)| k.len() + v.len() + "String".len())
                .sum::<usize>()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// SQS refused entries for a reason that retrying cannot fix (too large, bad attribute…).
    #[error("{count} message(s) rejected by SQS ({code})")]
    Rejected { count: usize, code: String },
    /// SQS could not be reached or kept failing entries after every retry.
    #[error("{count} message(s) not queued after {attempts} attempts: {last_error}")]
    Unavailable {
        count: usize,
        attempts: usize,
        last_error: String,
    },
}

/// Retry policy for failed entries.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_retries: usize,
    pub min_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 3,
            min_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(800),
        }
    }
}

/// How long a record that failed with a retryable error stays invisible before its
/// redelivery (the engine sets it with `ChangeMessageVisibility` instead of waiting out the
/// queue's visibility timeout, which would hold every later message of its FIFO group).
///
/// `receive_count` is the record's `ApproximateReceiveCount` (1 on the first delivery);
/// `jitter` is a uniform sample in [0, 1). The delay grows 2 s, 4 s, 8 s, … up to `max_secs`,
/// with the upper half jittered so a burst of failed lanes does not come back at once; a
/// server's `retry_after` (a 429's Retry-After) is honoured up to the same maximum.
pub fn retry_delay_secs(
    receive_count: u32,
    retry_after_secs: Option<u32>,
    max_secs: u32,
    jitter: f64,
) -> u32 {
    let max = max_secs.max(1);
    let exp = receive_count.saturating_sub(1).min(16);
    let ceiling = 2u32.saturating_mul(1 << exp).min(max);
    let jitter = jitter.clamp(0.0, 1.0);
    let backoff = (f64::from(ceiling) * (0.5 + jitter / 2.0)).ceil() as u32;
    backoff.max(retry_after_secs.unwrap_or(0)).clamp(1, max)
}

/// A record handed back to its queue as a batch failure (see [`QueuePublisher::delay_returned`]).
#[derive(Debug, Clone, Copy)]
pub struct ReturnedRecord<'a> {
    pub receipt: &'a str,
    /// Its `ApproximateReceiveCount`.
    pub receive_count: u32,
    /// FIFO queues: the record's message group. `None`: the record has a delay of its own.
    pub group: Option<&'a str>,
}

/// The visibility each returned record gets, as (receipt handle, seconds): its retry delay.
/// The records of one FIFO group share one delay, drawn from the group's most received record,
/// so they become visible together and in their order (FIFO holds the whole group while any
/// of them is invisible anyway).
pub fn retry_delays(
    returned: &[ReturnedRecord<'_>],
    max_secs: u32,
    mut jitter: impl FnMut() -> f64,
) -> Vec<(String, i32)> {
    let mut most_received: std::collections::HashMap<&str, u32> = Default::default();
    for r in returned {
        if let Some(group) = r.group {
            let most = most_received.entry(group).or_default();
            *most = (*most).max(r.receive_count);
        }
    }
    let group_delay: std::collections::HashMap<&str, i32> = most_received
        .into_iter()
        .map(|(group, most)| {
            (
                group,
                retry_delay_secs(most, None, max_secs, jitter()) as i32,
            )
        })
        .collect();
    returned
        .iter()
        .map(|r| {
            let secs = match r.group {
                Some(group) => group_delay[group],
                None => retry_delay_secs(r.receive_count, None, max_secs, jitter()) as i32,
            };
            (r.receipt.to_owned(), secs)
        })
        .collect()
}

#[derive(Clone)]
pub struct QueuePublisher {
    client: aws_sdk_sqs::Client,
    retry: RetryPolicy,
}

/// A record to send to a dead-letter queue (see [`QueuePublisher::park`]).
#[derive(Debug, Clone)]
pub struct ParkedRecord {
    /// The SQS message id (the DLQ dedup id on FIFO queues).
    pub message_id: String,
    pub body: String,
    /// FIFO queues only: the record's message group.
    pub group_id: Option<String>,
    pub reason: String,
}

impl QueuePublisher {
    pub fn new(client: aws_sdk_sqs::Client, retry: RetryPolicy) -> Self {
        Self { client, retry }
    }

    /// Sends every message to `queue_url`, in order. Returns the number of SQS calls made.
    pub async fn send_all(
        &self,
        queue_url: &str,
        messages: Vec<OutgoingMessage>,
    ) -> Result<usize, QueueError> {
        let mut calls = 0;
        for batch in pack(messages) {
            calls += self.send_batch(queue_url, batch).await?;
        }
        Ok(calls)
    }

    /// Sets how long returned records stay invisible (`ChangeMessageVisibilityBatch`, ten at
    /// a time): the engine's retry delay instead of the queue's whole visibility timeout.
    /// `items` are (receipt handle, seconds). Best effort: a record whose change fails keeps
    /// the queue's timeout; returns how many were changed.
    pub async fn set_visibility(&self, queue_url: &str, items: &[(String, i32)]) -> usize {
        use aws_sdk_sqs::types::ChangeMessageVisibilityBatchRequestEntry as Entry;
        let mut changed = 0;
        for chunk in items.chunks(10) {
            let entries: Vec<Entry> = chunk
                .iter()
                .enumerate()
                .filter_map(|(i, (receipt, secs))| {
                    Entry::builder()
                        .id(format!("r{i}"))
                        .receipt_handle(receipt)
                        .visibility_timeout(*secs)
                        .build()
                        .ok()
                })
                .collect();
            match self
                .client
                .change_message_visibility_batch()
                .queue_url(queue_url)
                .set_entries(Some(entries))
                .send()
                .await
            {
                Ok(out) => {
                    changed += out.successful().len();
                    if !out.failed().is_empty() {
                        tracing::warn!(
                            failed = out.failed().len(),
                            "retry delay not set on some records; they wait for the visibility timeout"
                        );
                    }
                }
                Err(e) => tracing::warn!(
                    error = %aws_sdk_sqs::error::DisplayErrorContext(e),
                    "retry delay not set; the records wait for the visibility timeout"
                ),
            }
        }
        changed
    }

    /// Gives the records a handler returns as batch failures their retry delay
    /// ([`retry_delays`], jittered, at most `max`) instead of the queue's visibility timeout.
    /// Best effort like [`Self::set_visibility`]; returns how many were changed.
    pub async fn delay_returned(
        &self,
        queue_url: &str,
        returned: &[ReturnedRecord<'_>],
        max: Duration,
    ) -> usize {
        if returned.is_empty() {
            return 0;
        }
        let delays = retry_delays(returned, max.as_secs() as u32, crate::random_unit);
        self.set_visibility(queue_url, &delays).await
    }

    /// Moves up to `max` messages from the FIFO dead-letter queue `from` back to its FIFO
    /// source `to`, in their order: each keeps its body and `MessageGroupId`, gets a new
    /// deduplication id (the original one may still be in SQS's 5-minute window), and is
    /// deleted from `from` only once `to` has it. Safe to repeat: the processor acknowledges
    /// a redriven message whose turn is done and resumes one whose turn is open. Returns how
    /// many moved.
    pub async fn redrive(&self, from: &str, to: &str, max: usize) -> Result<usize, QueueError> {
        use aws_sdk_sqs::types::{
            DeleteMessageBatchRequestEntry, MessageSystemAttributeName,
            SendMessageBatchRequestEntry,
        };
        let unavailable = |e: String| QueueError::Unavailable {
            count: 0,
            attempts: 1,
            last_error: e,
        };
        let mut moved = 0;
        while moved < max {
            let got = self
                .client
                .receive_message()
                .queue_url(from)
                .max_number_of_messages(10.min((max - moved) as i32))
                .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
                .wait_time_seconds(1)
                .send()
                .await
                .map_err(|e| unavailable(aws_sdk_sqs::error::DisplayErrorContext(e).to_string()))?;
            let messages = got.messages.unwrap_or_default();
            if messages.is_empty() {
                break;
            }
            let sends: Vec<SendMessageBatchRequestEntry> = messages
                .iter()
                .enumerate()
                .filter_map(|(i, m)| {
                    let group = m
                        .attributes
                        .as_ref()
                        .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
                        .cloned()
                        .or_else(|| m.message_id.clone())?;
                    SendMessageBatchRequestEntry::builder()
                        .id(format!("m{i}"))
                        .message_body(m.body.clone().unwrap_or_default())
                        .message_group_id(group)
                        .message_deduplication_id(format!(
                            "redrive-{}",
                            m.message_id.as_deref().unwrap_or_default()
                        ))
                        .build()
                        .ok()
                })
                .collect();
            let out = self
                .client
                .send_message_batch()
                .queue_url(to)
                .set_entries(Some(sends))
                .send()
                .await
                .map_err(|e| unavailable(aws_sdk_sqs::error::DisplayErrorContext(e).to_string()))?;
            if !out.failed().is_empty() {
                // Nothing is deleted: the batch stays in the DLQ (a repeat is harmless).
                return Err(QueueError::Rejected {
                    count: out.failed().len(),
                    code: out.failed()[0].code().to_owned(),
                });
            }
            let deletes: Vec<DeleteMessageBatchRequestEntry> = messages
                .iter()
                .enumerate()
                .filter_map(|(i, m)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(format!("m{i}"))
                        .receipt_handle(m.receipt_handle.clone()?)
                        .build()
                        .ok()
                })
                .collect();
            self.client
                .delete_message_batch()
                .queue_url(from)
                .set_entries(Some(deletes))
                .send()
                .await
                .map_err(|e| unavailable(aws_sdk_sqs::error::DisplayErrorContext(e).to_string()))?;
            moved += messages.len();
        }
        Ok(moved)
    }

    /// Sends records that can never succeed to their dead-letter queue (`parked_reason`
    /// attribute, at most 200 characters) so they are kept and alarmed without blocking
    /// anything. If that fails, their ids are added to `response` so SQS redelivers them (its
    /// own redrive ends in the DLQ too). Returns how many were parked.
    pub async fn park(
        &self,
        dead_letter_queue_url: &str,
        records: Vec<ParkedRecord>,
        response: &mut aws_lambda_events::sqs::SqsBatchResponse,
    ) -> usize {
        if records.is_empty() {
            return 0;
        }
        for r in &records {
            tracing::warn!(message_id = %r.message_id, reason = %r.reason, "record parked in the DLQ");
        }
        let ids: Vec<String> = records.iter().map(|r| r.message_id.clone()).collect();
        let messages = records
            .into_iter()
            .map(|r| OutgoingMessage {
                body: r.body,
                dedup_id: r.group_id.as_ref().map(|_| r.message_id.clone()),
                group_id: r.group_id,
                attributes: vec![("parked_reason", r.reason.chars().take(200).collect())],
            })
            .collect();
        match self.send_all(dead_letter_queue_url, messages).await {
            Ok(_) => ids.len(),
            Err(e) => {
                tracing::warn!(error = %e, "parking failed; returning the records for redelivery");
                for id in ids {
                    let mut f = aws_lambda_events::sqs::BatchItemFailure::default();
                    f.item_identifier = id;
                    response.batch_item_failures.push(f);
                }
                0
            }
        }
    }

    async fn send_batch(
        &self,
        queue_url: &str,
        batch: Vec<OutgoingMessage>,
    ) -> Result<usize, QueueError> {
        // Entry ids are the positions in `batch`; `pending` keeps the ones not yet accepted.
        let mut pending: Vec<usize> = (0..batch.len()).collect();
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(self.retry.min_delay)
            .with_max_delay(self.retry.max_delay)
            .with_max_times(self.retry.max_retries)
            .with_jitter()
            .build();
        let mut calls = 0;
        loop {
            calls += 1;
            let entries: Vec<SendMessageBatchRequestEntry> =
                pending.iter().map(|&i| entry(i, &batch[i])).collect();
            let result = self
                .client
                .send_message_batch()
                .queue_url(queue_url)
                .set_entries(Some(entries))
                .send()
                .await;
            let last_error = match result {
                Ok(out) => {
                    let mut still = Vec::new();
                    let mut rejected = Vec::new();
                    for f in out.failed() {
                        let Ok(i) = f.id().parse::<usize>() else {
                            continue;
                        };
                        if f.sender_fault() {
                            rejected.push(f.code().to_owned());
                        } else {
                            still.push(i);
                        }
                    }
                    if let Some(code) = rejected.first() {
                        return Err(QueueError::Rejected {
                            count: rejected.len(),
                            code: code.clone(),
                        });
                    }
                    still.sort_unstable();
                    pending = still;
                    if pending.is_empty() {
                        return Ok(calls);
                    }
                    format!("{} entries failed on the SQS side", pending.len())
                }
                Err(e) => aws_sdk_sqs::error::DisplayErrorContext(e).to_string(),
            };
            match backoff.next() {
                Some(delay) => {
                    tracing::warn!(pending = pending.len(), delay_ms = delay.as_millis() as u64, error = %last_error, "SQS batch send incomplete; retrying");
                    tokio::time::sleep(delay).await;
                }
                None => {
                    return Err(QueueError::Unavailable {
                        count: pending.len(),
                        attempts: calls,
                        last_error,
                    })
                }
            }
        }
    }
}

#[allow(
    clippy::expect_used,
    reason = "the builders fail only when a required field is unset, and each is set here"
)]
fn entry(id: usize, m: &OutgoingMessage) -> SendMessageBatchRequestEntry {
    let mut b = SendMessageBatchRequestEntry::builder()
        .id(id.to_string())
        .message_body(m.body.clone())
        .set_message_group_id(m.group_id.clone())
        .set_message_deduplication_id(m.dedup_id.clone());
    for (k, v) in &m.attributes {
        b = b.message_attributes(
            *k,
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value(v.clone())
                .build()
                .expect("data_type is set"),
        );
    }
    b.build().expect("id and body are set")
}

/// Splits messages, keeping their order, into batches within both SQS limits.
pub fn pack(messages: Vec<OutgoingMessage>) -> Vec<Vec<OutgoingMessage>> {
    let mut batches: Vec<Vec<OutgoingMessage>> = Vec::new();
    let mut bytes = 0;
    for m in messages {
        let size = m.size();
        match batches.last_mut() {
            Some(b) if b.len() < MAX_BATCH_ENTRIES && bytes + size <= MAX_BATCH_BYTES => {
                bytes += size;
                b.push(m);
            }
            _ => {
                let mut b = Vec::with_capacity(MAX_BATCH_ENTRIES);
                b.push(m);
                batches.push(b);
                bytes = size;
            }
        }
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(n: usize, size: usize) -> OutgoingMessage {
        OutgoingMessage {
            body: format!("{n:0>10}{}", "x".repeat(size.saturating_sub(10))),
            group_id: None,
            dedup_id: None,
            attributes: Vec::new(),
        }
    }

    #[test]
    fn retry_delays_grow_are_jittered_and_never_pass_the_maximum() {
        // Without jitter's upper half: 1, 2, 4, … (half the ceiling), capped.
        let low: Vec<u32> = (1..=8)
            .map(|n| retry_delay_secs(n, None, 60, 0.0))
            .collect();
        assert_eq!(low, vec![1, 2, 4, 8, 16, 30, 30, 30]);
        let high: Vec<u32> = (1..=8)
            .map(|n| retry_delay_secs(n, None, 60, 0.999_999))
            .collect();
        assert_eq!(high, vec![2, 4, 8, 16, 32, 60, 60, 60]);
        for n in [0, 1, 5, 40, u32::MAX] {
            for j in [0.0, 0.3, 0.99, 7.0, -1.0] {
                let d = retry_delay_secs(n, Some(500), 60, j);
                assert!((1..=60).contains(&d), "{n} {j}: {d}");
            }
        }
        // A server's Retry-After wins when longer, within the maximum.
        assert_eq!(retry_delay_secs(1, Some(20), 60, 0.0), 20);
        assert_eq!(retry_delay_secs(1, Some(600), 60, 0.0), 60);
        assert_eq!(retry_delay_secs(1, None, 0, 0.0), 1);
    }

    #[test]
    fn a_fifo_groups_returned_records_share_one_delay_from_its_most_received() {
        let r = |receipt, receive_count, group| ReturnedRecord {
            receipt,
            receive_count,
            group,
        };
        let returned = [
            r("a1", 1, Some("a")),
            r("b1", 1, Some("b")),
            r("a2", 4, Some("a")),
            r("s1", 3, None),
            r("s2", 1, None),
        ];
        // No jitter's upper half: half of each ceiling.
        let delays = retry_delays(&returned, 60, || 0.0);
        let secs: Vec<(&str, i32)> = delays.iter().map(|(r, s)| (r.as_str(), *s)).collect();
        assert_eq!(
            secs,
            [("a1", 8), ("b1", 1), ("a2", 8), ("s1", 4), ("s2", 1)]
        );
        // One draw per group and per groupless record, and a group's records equal whatever
        // the draw.
        let mut draws = 0;
        let delays = retry_delays(&returned, 60, || {
            draws += 1;
            0.999
        });
        assert_eq!(draws, 4);
        assert_eq!(delays[0].1, delays[2].1);
        assert!(retry_delays(&[], 60, || unreachable!()).is_empty());
    }

    #[test]
    fn packs_at_most_ten_per_batch_in_order() {
        let batches = pack((0..25).map(|n| msg(n, 10)).collect());
        assert_eq!(
            batches.iter().map(Vec::len).collect::<Vec<_>>(),
            [10, 10, 5]
        );
        let order: Vec<String> = batches.concat().into_iter().map(|m| m.body).collect();
        let expected: Vec<String> = (0..25).map(|n| format!("{n:0>10}")).collect();
        assert_eq!(order, expected);
    }

    #[test]
    fn packs_by_total_size_too() {
        let batches = pack((0..4).map(|n| msg(n, 100 * 1024)).collect());
        assert_eq!(batches.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2]);
        assert!(pack(Vec::new()).is_empty());
    }
}
