//! The project's library crate: everything more than one function needs.
//!
//! - [`envelope`]: the versioned queue contract;
//! - [`meta`]: WhatsApp and Instagram webhook normalisation;
//! - [`signature`]: `X-Hub-Signature-256` and verify-token checks;
//! - [`wire`]: everything that crosses a queue (envelope, status events, extraction job)
//!   and the one parser consumers read it with;
//! - [`ordering`], [`queue`]: FIFO keys and publishing to SQS;
//! - [`openai`], [`breaker`]: the Responses API client with retries and a circuit breaker;
//! - [`graph`], [`split`]: Meta Graph API sends and channel-sized message splitting;
//! - [`fifo`]: running a FIFO batch with the skip-group failure rule;
//! - [`idempotency`]: the DynamoDB claim/complete record per inbound message;
//! - [`db`]: Postgres connection, migrations and tenant-scoped queries;
//! - [`bootstrap`]: the one start-up path of every function;
//! - [`config`], [`secrets`], [`aws`], [`telemetry`], [`metrics`]: start-up plumbing, logs
//!   and CloudWatch EMF metrics;
//! - [`turn`], [`credits`]: the turn engine's decisions (states, sends, retry delays, holds);
//! - [`netguard`]: keeps local runs on loopback.

// No panics on data: request, queue or database values are matched, never unwrapped; the few
// start-up and plain-data cases carry an `allow` with their reason.
#![cfg_attr(not(test), deny(clippy::expect_used, clippy::unwrap_used))]

pub mod aws;
pub mod bootstrap;
pub mod breaker;
pub mod cache;
pub mod checked;
pub mod config;
pub mod credits;
pub mod db;
pub mod digest;
pub mod envelope;
pub mod fifo;
pub mod graph;
#[cfg(feature = "http")]
pub mod http;
pub mod idempotency;
pub mod lead;
pub mod meta;
pub mod metrics;
pub mod netguard;
pub mod openai;
pub mod ordering;
pub mod queue;
pub mod ratelimit;
pub mod response;
pub mod secrets;
pub mod signature;
pub mod split;
pub mod telemetry;
pub mod turn;
pub mod webchat;
pub mod wire;

/// Locks `m`, also when a thread panicked while holding it: every value kept behind these
/// mutexes (caches, counters, sets of ids) stays valid whatever a panicking holder did, and with
/// `panic = "abort"` in release builds a panic ends the process anyway.
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `N` bytes from the system's secure random generator (keys, secrets, public ids).
#[allow(
    clippy::expect_used,
    reason = "a system without a working random generator cannot issue keys at all"
)]
pub fn random_bytes<const N: usize>() -> [u8; N] {
    use aws_lc_rs::rand::SecureRandom;
    let mut b = [0u8; N];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("system randomness");
    b
}

/// A uniform sample in [0, 1) from the system's generator (retry jitter, fault draws).
pub fn random_unit() -> f64 {
    f64::from(u32::from_le_bytes(random_bytes::<4>())) / (f64::from(u32::MAX) + 1.0)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The variable that carries a function's template `Timeout` on the local stack (where
/// `cargo lambda watch` gives every invocation the same 30 s deadline).
pub fn local_timeout_var(function: &str) -> String {
    format!(
        "LOCAL_FUNCTION_TIMEOUT_SECS_{}",
        function.to_ascii_uppercase().replace('-', "_")
    )
}

/// The `Instant` by which this invocation must answer: Lambda's deadline less `margin`; on the
/// local stack (the function's [`local_timeout_var`] is set) its template timeout from now.
pub fn invocation_deadline(
    lambda_deadline: std::time::SystemTime,
    margin: std::time::Duration,
) -> std::time::Instant {
    let local = std::env::var("AWS_LAMBDA_FUNCTION_NAME")
        .ok()
        .and_then(|f| std::env::var(local_timeout_var(&f)).ok())
        .and_then(|t| t.parse::<u64>().ok());
    match local {
        Some(secs) => {
            std::time::Instant::now() + std::time::Duration::from_secs(secs).saturating_sub(margin)
        }
        None => deadline_before(lambda_deadline, margin),
    }
}

/// The `Instant` by which an invocation must answer: Lambda's deadline (wall clock) less
/// `margin`, or 30 s from now when the deadline is already past or unknown.
pub fn deadline_before(
    lambda_deadline: std::time::SystemTime,
    margin: std::time::Duration,
) -> std::time::Instant {
    let remaining = lambda_deadline
        .duration_since(std::time::SystemTime::now())
        .unwrap_or(std::time::Duration::from_secs(30));
    std::time::Instant::now() + remaining.saturating_sub(margin)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    #[test]
    fn a_lock_a_panicking_thread_held_still_serves_its_value() {
        let m = Arc::new(Mutex::new(vec![1]));
        let held = Arc::clone(&m);
        let crashed = std::thread::spawn(move || {
            let mut v = held.lock().unwrap();
            v.push(2);
            panic!("a holder panics");
        })
        .join();
        assert!(crashed.is_err());
        assert!(m.is_poisoned());
        super::lock(&m).push(3);
        assert_eq!(*super::lock(&m), vec![1, 2, 3]);
    }
}
