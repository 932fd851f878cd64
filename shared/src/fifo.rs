//! Running one SQS FIFO batch: the records of a message group strictly in order, different groups
//! concurrently, and partial-batch failures by the skip-group rule.
//!
//! - `Outcome::Retry`: that record **and every later record of the same group** go back in
//!   `batchItemFailures` (running them now would break the group's order); other groups are not
//!   affected.
//! - `Outcome::Permanent`: the record cannot succeed by retrying (unparseable body, unknown
//!   envelope version). It must not block its group for maxReceiveCount × visibility timeout, so
//!   it is acknowledged and handed back in [`BatchReport::permanent`]; the caller parks it where
//!   nothing is lost (the function sends it to the DLQ itself and counts it).
//! - `Outcome::Done`: acknowledged.

use std::future::Future;

use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsMessage};
use futures_util::future::join_all;

/// What handling one record came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// Temporary trouble (timeouts, 429/5xx, database down): SQS redelivers it later.
    Retry(String),
    /// Will fail the same way every time: park it, do not block the group.
    Permanent(String),
}

/// A permanently failed record and why.
#[derive(Debug, Clone)]
pub struct Parked {
    pub message: SqsMessage,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct BatchReport {
    pub response: SqsBatchResponse,
    pub done: usize,
    pub retried: usize,
    /// Records skipped because an earlier record of their group failed.
    pub skipped: usize,
    pub permanent: Vec<Parked>,
}

/// The record's `MessageGroupId` (every FIFO record has one; a record without is its own group).
pub fn group_of(m: &SqsMessage) -> &str {
    m.attributes
        .get("MessageGroupId")
        .map(String::as_str)
        .or(m.message_id.as_deref())
        .unwrap_or("")
}

/// Runs `handler` over the batch as described in the module docs.
pub async fn run_batch<F, Fut>(records: Vec<SqsMessage>, handler: F) -> BatchReport
where
    F: Fn(SqsMessage) -> Fut,
    Fut: Future<Output = Outcome>,
{
    // Groups in order of first appearance, records in batch order within each.
    let mut groups: Vec<(String, Vec<SqsMessage>)> = Vec::new();
    for m in records {
        let g = group_of(&m).to_owned();
        match groups.iter_mut().find(|(name, _)| *name == g) {
            Some((_, list)) => list.push(m),
            None => groups.push((g, vec![m])),
        }
    }
    let handler = &handler;
    let per_group = join_all(groups.into_iter().map(|(_, list)| async move {
        let mut report = BatchReport::default();
        let mut iter = list.into_iter();
        while let Some(m) = iter.next() {
            let id = m.message_id.clone().unwrap_or_default();
            match handler(m.clone()).await {
                Outcome::Done => report.done += 1,
                Outcome::Permanent(reason) => report.permanent.push(Parked { message: m, reason }),
                Outcome::Retry(reason) => {
                    tracing::warn!(message_id = %id, reason = %reason, "record failed; it and the rest of its group will be retried");
                    report.retried += 1;
                    push_failure(&mut report.response, id);
                    for rest in iter.by_ref() {
                        report.skipped += 1;
                        push_failure(&mut report.response, rest.message_id.unwrap_or_default());
                    }
                }
            }
        }
        report
    }))
    .await;
    let mut total = BatchReport::default();
    for r in per_group {
        total.done += r.done;
        total.retried += r.retried;
        total.skipped += r.skipped;
        total.permanent.extend(r.permanent);
        total
            .response
            .batch_item_failures
            .extend(r.response.batch_item_failures);
    }
    total
}

fn push_failure(resp: &mut SqsBatchResponse, id: String) {
    let mut f = BatchItemFailure::default();
    f.item_identifier = id;
    resp.batch_item_failures.push(f);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    fn record(id: &str, group: &str) -> SqsMessage {
        let mut m = SqsMessage::default();
        m.message_id = Some(id.to_owned());
        m.body = Some(id.to_owned());
        m.attributes.insert("MessageGroupId".into(), group.into());
        m
    }

    fn failures(r: &BatchReport) -> Vec<String> {
        r.response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.clone())
            .collect()
    }

    #[tokio::test]
    async fn a_retryable_failure_fails_the_rest_of_its_group_only() {
        let batch = vec![
            record("a1", "A"),
            record("b1", "B"),
            record("a2", "A"),
            record("b2", "B"),
            record("a3", "A"),
            record("c1", "C"),
        ];
        let seen = Mutex::new(Vec::new());
        let report = run_batch(batch, |m| {
            let id = m.message_id.clone().unwrap();
            seen.lock().unwrap().push(id.clone());
            async move {
                if id == "a2" {
                    Outcome::Retry("timeout".into())
                } else {
                    Outcome::Done
                }
            }
        })
        .await;
        assert_eq!(failures(&report), ["a2", "a3"]);
        assert_eq!((report.done, report.retried, report.skipped), (4, 1, 1));
        let seen = seen.into_inner().unwrap();
        assert!(
            !seen.contains(&"a3".to_owned()),
            "a3 must not run after a2 failed"
        );
        assert!(seen.contains(&"b2".to_owned()) && seen.contains(&"c1".to_owned()));
    }

    #[tokio::test]
    async fn permanent_failures_are_parked_without_blocking_the_group() {
        let batch = vec![record("a1", "A"), record("a2", "A"), record("a3", "A")];
        let report = run_batch(batch, |m| async move {
            if m.message_id.as_deref() == Some("a1") {
                Outcome::Permanent("unparseable".into())
            } else {
                Outcome::Done
            }
        })
        .await;
        assert!(failures(&report).is_empty());
        assert_eq!(report.done, 2);
        assert_eq!(report.permanent.len(), 1);
        assert_eq!(
            report.permanent[0].message.message_id.as_deref(),
            Some("a1")
        );
    }

    #[tokio::test]
    async fn groups_run_concurrently_and_each_keeps_its_order() {
        // Each record sleeps, so the interleaving shows whether groups overlap.
        let batch: Vec<_> = ["A", "B", "C"]
            .iter()
            .flat_map(|g| (0..2).map(move |i| record(&format!("{g}{i}"), g)))
            .collect();
        let order = Mutex::new(Vec::new());
        let report = run_batch(batch, |m| {
            let order = &order;
            async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                order.lock().unwrap().push(m.message_id.unwrap());
                Outcome::Done
            }
        })
        .await;
        assert_eq!(report.done, 6);
        let order = order.into_inner().unwrap();
        for g in ["A", "B", "C"] {
            let mine: Vec<_> = order
                .iter()
                .filter(|id| id.starts_with(g))
                .cloned()
                .collect();
            assert_eq!(mine, [format!("{g}0"), format!("{g}1")]);
        }
        // Concurrency, asserted on the interleaving rather than on time: every group's first
        // record finished before any group's second one.
        let firsts = order.iter().take(3).filter(|id| id.ends_with('0')).count();
        assert_eq!(firsts, 3, "{order:?}");
    }
}
