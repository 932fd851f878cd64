//! Crash points: the boundaries of a turn where the fault tests make the processor die.
//!
//! Built into debug builds (the local stack runs those) and with the `failpoints` feature (the
//! processor's own tests); a release build, what `sam build` deploys, has none, and
//! [`CrashPoints::hit`] is then always false.
//!
//! Two ways to arm them:
//! - a test arms a point for a number of hits ([`CrashPoints::arm`]); the unit then stops there
//!   as if the process had died (nothing after it runs, the turn's lease is not released);
//! - `FAIL_POINTS=after_send=0.01,before_record=0.02` (the fault harness) aborts the process
//!   at a point with that probability: a real crash, as Lambda would see it.

/// Every boundary a crash point can be armed at.
pub const POINTS: &[&str] = &[
    "after_claim",
    "after_model",
    "before_send",
    "after_send",
    "before_record",
    "after_record",
];

#[derive(Default)]
pub struct CrashPoints {
    #[cfg(any(feature = "failpoints", debug_assertions))]
    armed: std::sync::Mutex<std::collections::HashMap<String, u32>>,
    #[cfg(any(feature = "failpoints", debug_assertions))]
    abort_rates: Vec<(String, f64)>,
}

impl CrashPoints {
    /// From `FAIL_POINTS` (with the feature; none otherwise).
    pub fn from_env() -> Self {
        #[cfg(any(feature = "failpoints", debug_assertions))]
        {
            let abort_rates = std::env::var("FAIL_POINTS")
                .map(|v| parse_rates(&v))
                .unwrap_or_default();
            if !abort_rates.is_empty() {
                tracing::warn!(points = ?abort_rates, "crash points armed (FAIL_POINTS)");
            }
            Self {
                armed: Default::default(),
                abort_rates,
            }
        }
        #[cfg(not(any(feature = "failpoints", debug_assertions)))]
        Self::default()
    }

    /// Arms `point` for its next `times` hits (tests).
    #[cfg(any(feature = "failpoints", debug_assertions))]
    pub fn arm(&self, point: &str, times: u32) {
        assert!(POINTS.contains(&point), "no crash point {point}");
        shared::lock(&self.armed).insert(point.to_owned(), times);
    }

    /// Whether the unit must stop at `point` now (an armed test point); aborts the process
    /// when a `FAIL_POINTS` rate says so.
    pub fn hit(&self, point: &str) -> bool {
        #[cfg(any(feature = "failpoints", debug_assertions))]
        {
            if let Some((_, rate)) = self.abort_rates.iter().find(|(p, _)| p == point) {
                if shared::random_unit() < *rate {
                    tracing::error!(point, "crash point: aborting the process");
                    // Unbuffered, so the fault harness counts every crash from the log.
                    eprintln!("crash point {point}: aborting (FAIL_POINTS)");
                    report_exit(point);
                    std::process::abort();
                }
            }
            let mut armed = shared::lock(&self.armed);
            if let Some(n) = armed.get_mut(point) {
                if *n > 0 {
                    *n -= 1;
                    tracing::warn!(point, "crash point: the unit stops here");
                    return true;
                }
            }
            false
        }
        #[cfg(not(any(feature = "failpoints", debug_assertions)))]
        {
            let _ = point;
            false
        }
    }
}

#[cfg(any(feature = "failpoints", debug_assertions))]
static INVOCATION: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Names the invocation running now (the handler sets it), so a crash can be reported for it.
pub fn set_invocation(request_id: &str) {
    #[cfg(any(feature = "failpoints", debug_assertions))]
    {
        *shared::lock(&INVOCATION) = Some(request_id.to_owned());
    }
    #[cfg(not(any(feature = "failpoints", debug_assertions)))]
    let _ = request_id;
}

/// What Lambda does when a runtime dies mid-invocation: the invocation fails at once with
/// `Runtime.ExitError` (the caller, e.g. the SQS event source, learns it right away). The local
/// runtime (`cargo lambda watch`) would instead leave the invoke unanswered, so the dying
/// process reports it to the runtime API itself, then aborts.
#[cfg(any(feature = "failpoints", debug_assertions))]
fn report_exit(point: &str) {
    use std::io::{Read, Write};
    let id = shared::lock(&INVOCATION).clone();
    let (Ok(api), Some(id)) = (std::env::var("AWS_LAMBDA_RUNTIME_API"), id) else {
        return;
    };
    // `host:port` (cargo lambda watch adds `http://`), perhaps with a path prefix.
    let bare = api.trim_start_matches("http://");
    let (host, prefix) = match bare.find('/') {
        Some(i) => (&bare[..i], bare[i..].trim_end_matches('/')),
        None => (bare, ""),
    };
    let Ok(mut stream) = std::net::TcpStream::connect(host) else {
        eprintln!("crash point {point}: the runtime API at {host} is unreachable");
        return;
    };
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(2)));
    let body = format!(
        r#"{{"errorType":"Runtime.ExitError","errorMessage":"the process aborted at crash point {point}"}}"#
    );
    let request = format!(
        "POST {prefix}/2018-06-01/runtime/invocation/{id}/error HTTP/1.1\r\nHost: {host}\r\n\
         Content-Type: application/json\r\nLambda-Runtime-Function-Error-Type: Runtime.ExitError\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if stream.write_all(request.as_bytes()).is_ok() {
        let mut answer = [0u8; 128];
        let n = stream.read(&mut answer).unwrap_or(0);
        let status = String::from_utf8_lossy(&answer[..n]);
        eprintln!(
            "crash point {point}: reported to the runtime API ({api}): {}",
            status.lines().next().unwrap_or("no answer")
        );
    }
}

/// `name=rate,name=rate` → the known points with a rate in (0, 1].
#[cfg(any(feature = "failpoints", debug_assertions))]
fn parse_rates(v: &str) -> Vec<(String, f64)> {
    v.split(',')
        .filter_map(|kv| {
            let (k, r) = kv.trim().split_once('=')?;
            let r: f64 = r.trim().parse().ok()?;
            (POINTS.contains(&k.trim()) && r > 0.0 && r <= 1.0).then(|| (k.trim().to_owned(), r))
        })
        .collect()
}

#[cfg(all(test, any(feature = "failpoints", debug_assertions)))]
mod tests {
    use super::*;

    #[test]
    fn armed_points_fire_the_given_number_of_times() {
        let c = CrashPoints::default();
        assert!(!c.hit("after_send"));
        c.arm("after_send", 2);
        assert!(c.hit("after_send"));
        assert!(!c.hit("before_send"));
        assert!(c.hit("after_send"));
        assert!(!c.hit("after_send"));
    }

    #[test]
    fn rates_parse_only_known_points_and_sane_rates() {
        assert_eq!(
            parse_rates("after_send=0.01, before_record=1,bogus=0.5,after_model=2,after_claim=x"),
            vec![("after_send".into(), 0.01), ("before_record".into(), 1.0)]
        );
    }
}
