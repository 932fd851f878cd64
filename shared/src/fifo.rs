//! Running one SQS FIFO batch: the records of a message group strictly in order, different groups
//! concurrently, and partial-batch failures by the skip-group rule.
//!
//! - `Outcome::Retry`: that record **and every later record of its lane** go back in
//!   `batchItemFailures` (running them now would break the lane's order; with [`run_batch`] the
//!   lane is the whole group); other lanes and groups are not affected.
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

impl From<crate::db::DbError> for Outcome {
    /// The database's own classification: connection trouble and timeouts retry, the rest is
    /// permanent.
    fn from(e: crate::db::DbError) -> Self {
        if e.is_retryable() {
            Outcome::Retry(e.to_string())
        } else {
            Outcome::Permanent(e.to_string())
        }
    }
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

/// The record's `ApproximateReceiveCount` (1 on the first delivery; 1 when absent).
pub fn receive_count(m: &SqsMessage) -> u32 {
    m.attributes
        .get("ApproximateReceiveCount")
        .and_then(|c| c.parse().ok())
        .unwrap_or(1)
}

/// Runs `handler` over the batch as described in the module docs, one record at a time.
pub async fn run_batch<F, Fut>(records: Vec<SqsMessage>, handler: F) -> BatchReport
where
    F: Fn(SqsMessage) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let handler = &handler;
    run_lanes(
        records,
        |_| Some(String::new()),
        false,
        |mut unit: Vec<SqsMessage>| handler(unit.remove(0)),
    )
    .await
}

/// Like [`run_batch`], but the records of a group are split into lanes by `lane_key` (e.g. the
/// conversation): each lane's records are handed to `handler` together as one unit (one
/// conversation's burst becomes one model turn) and different lanes of a group run
/// concurrently. A record without a key is a lane of its own.
///
/// The skip-group rule holds per lane: when a unit fails with `Retry`, it and the later
/// records of its lane are returned; records of other lanes that succeeded are acknowledged
/// (the order that matters is the lane's: returning them would only run them again and spend
/// their receives towards the queue's `maxReceiveCount`). Parked records are not returned.
pub async fn run_batch_coalesced<K, F, Fut>(
    records: Vec<SqsMessage>,
    lane_key: K,
    handler: F,
) -> BatchReport
where
    K: Fn(&SqsMessage) -> Option<String>,
    F: Fn(Vec<SqsMessage>) -> Fut,
    Fut: Future<Output = Outcome>,
{
    run_lanes(records, lane_key, true, handler).await
}

/// How each record of a group ended, by position in the group.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fate {
    NotRun,
    Done,
    Retried,
    Parked,
}

async fn run_lanes<K, F, Fut>(
    records: Vec<SqsMessage>,
    lane_key: K,
    coalesce: bool,
    handler: F,
) -> BatchReport
where
    K: Fn(&SqsMessage) -> Option<String>,
    F: Fn(Vec<SqsMessage>) -> Fut,
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
    let (handler, lane_key) = (&handler, &lane_key);
    let per_group = join_all(groups.into_iter().map(|(_, list)| async move {
        // Lanes of positions; a record without a key gets a lane of its own.
        let mut lanes: Vec<(Option<String>, Vec<usize>)> = Vec::new();
        for (pos, m) in list.iter().enumerate() {
            let key = lane_key(m);
            match lanes.iter_mut().find(|(k, _)| key.is_some() && *k == key) {
                Some((_, positions)) => positions.push(pos),
                None => lanes.push((key, vec![pos])),
            }
        }
        let list = &list;
        let lane_results = join_all(lanes.into_iter().map(|(_, positions)| async move {
            let units: Vec<Vec<usize>> = if coalesce {
                vec![positions]
            } else {
                positions.into_iter().map(|p| vec![p]).collect()
            };
            let mut fates = Vec::new();
            let mut parked = Vec::new();
            for unit in units {
                let records: Vec<SqsMessage> = unit.iter().map(|&p| list[p].clone()).collect();
                match handler(records.clone()).await {
                    Outcome::Done => fates.extend(unit.iter().map(|&p| (p, Fate::Done))),
                    Outcome::Permanent(reason) => {
                        fates.extend(unit.iter().map(|&p| (p, Fate::Parked)));
                        parked.extend(records.into_iter().map(|message| Parked {
                            message,
                            reason: reason.clone(),
                        }));
                    }
                    Outcome::Retry(reason) => {
                        let ids: Vec<&str> = records
                            .iter()
                            .map(|m| m.message_id.as_deref().unwrap_or(""))
                            .collect();
                        tracing::warn!(message_ids = ?ids, reason = %reason, "record failed; it and the rest of its group will be retried");
                        fates.extend(unit.iter().map(|&p| (p, Fate::Retried)));
                        // The rest of this lane is not run: it would overtake the failed unit.
                        break;
                    }
                }
            }
            (fates, parked)
        }))
        .await;
        let mut fate = vec![Fate::NotRun; list.len()];
        let mut report = BatchReport::default();
        for (fates, parked) in lane_results {
            for (p, f) in fates {
                fate[p] = f;
            }
            report.permanent.extend(parked);
        }
        // Returned: the failed units and what their lanes did not run (in group order). A
        // record another lane already handled is acknowledged: running it again would add
        // nothing to any lane's order, and each needless return spends one of its receives.
        for (pos, f) in fate.iter().enumerate() {
            match f {
                Fate::Parked => continue,
                Fate::Done => {
                    report.done += 1;
                    continue;
                }
                Fate::Retried => report.retried += 1,
                Fate::NotRun => report.skipped += 1,
            }
            push_failure(
                &mut report.response,
                list[pos].message_id.clone().unwrap_or_default(),
            );
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
    async fn a_lane_is_one_unit_and_a_failure_returns_that_lane_only() {
        // Group A: x, x, y, x (keys from the body's first letter); group B: x.
        let batch = vec![
            record("x1", "A"),
            record("x2", "A"),
            record("y1", "A"),
            record("x3", "A"),
            record("x9", "B"),
        ];
        let units = Mutex::new(Vec::new());
        let report = run_batch_coalesced(
            batch,
            |m| m.body.as_ref().map(|b| b[..1].to_owned()),
            |unit| {
                let ids: Vec<String> = unit.iter().map(|m| m.message_id.clone().unwrap()).collect();
                units.lock().unwrap().push(ids.clone());
                async move {
                    if ids.contains(&"y1".to_owned()) {
                        Outcome::Retry("model timeout".into())
                    } else {
                        Outcome::Done
                    }
                }
            },
        )
        .await;
        let mut units = units.into_inner().unwrap();
        units.sort();
        assert_eq!(units, [vec!["x1", "x2", "x3"], vec!["x9"], vec!["y1"]]);
        // x3 comes after y1 in the group, but its lane succeeded: acknowledged, not returned.
        assert_eq!(failures(&report), ["y1"]);
        assert_eq!((report.done, report.retried, report.skipped), (4, 1, 0));
    }

    #[tokio::test]
    async fn lanes_of_one_group_run_concurrently_and_stop_at_their_own_failure() {
        // Group A holds conversations p and q interleaved; p's first unit fails.
        let batch = vec![
            record("q1", "A"),
            record("p1", "A"),
            record("q2", "A"),
            record("p2", "A"),
        ];
        let events = Mutex::new(Vec::new());
        let report = run_lanes(
            batch,
            |m| m.body.as_ref().map(|b| b[..1].to_owned()),
            false,
            |unit| {
                let id = unit[0].message_id.clone().unwrap();
                let events = &events;
                async move {
                    events.lock().unwrap().push(format!("start {id}"));
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    events.lock().unwrap().push(format!("end {id}"));
                    if id == "p1" {
                        Outcome::Retry("timeout".into())
                    } else {
                        Outcome::Done
                    }
                }
            },
        )
        .await;
        let events = events.into_inner().unwrap();
        assert_eq!(
            &events[..2],
            ["start q1", "start p1"],
            "both lanes started before either finished: {events:?}"
        );
        assert!(
            !events.contains(&"start p2".to_owned()),
            "p2 must wait for p1"
        );
        assert!(events.contains(&"end q2".to_owned()), "q's lane went on");
        assert_eq!(failures(&report), ["p1", "p2"]);
        assert_eq!((report.done, report.retried, report.skipped), (2, 1, 1));
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
