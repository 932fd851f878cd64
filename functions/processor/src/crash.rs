//! Crash points: the boundaries of a turn where the fault tests make the processor die.
//!
//! Built only with the `failpoints` feature (the processor's own tests and the local stack's
//! fault runs); a release build has none, and [`CrashPoints::hit`] is then always false.
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
    #[cfg(feature = "failpoints")]
    armed: std::sync::Mutex<std::collections::HashMap<String, u32>>,
    #[cfg(feature = "failpoints")]
    abort_rates: Vec<(String, f64)>,
}

impl CrashPoints {
    /// From `FAIL_POINTS` (with the feature; none otherwise).
    pub fn from_env() -> Self {
        #[cfg(feature = "failpoints")]
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
        #[cfg(not(feature = "failpoints"))]
        Self::default()
    }

    /// Arms `point` for its next `times` hits (tests).
    #[cfg(feature = "failpoints")]
    pub fn arm(&self, point: &str, times: u32) {
        assert!(POINTS.contains(&point), "no crash point {point}");
        self.armed
            .lock()
            .expect("crash points")
            .insert(point.to_owned(), times);
    }

    /// Whether the unit must stop at `point` now (an armed test point); aborts the process
    /// when a `FAIL_POINTS` rate says so.
    pub fn hit(&self, point: &str) -> bool {
        #[cfg(feature = "failpoints")]
        {
            if let Some((_, rate)) = self.abort_rates.iter().find(|(p, _)| p == point) {
                let draw = f64::from(u32::from_le_bytes(shared::random_bytes::<4>()))
                    / f64::from(u32::MAX);
                if draw < *rate {
                    tracing::error!(point, "crash point: aborting the process");
                    std::process::abort();
                }
            }
            let mut armed = self.armed.lock().expect("crash points");
            if let Some(n) = armed.get_mut(point) {
                if *n > 0 {
                    *n -= 1;
                    tracing::warn!(point, "crash point: the unit stops here");
                    return true;
                }
            }
            false
        }
        #[cfg(not(feature = "failpoints"))]
        {
            let _ = point;
            false
        }
    }
}

/// `name=rate,name=rate` → the known points with a rate in (0, 1].
#[cfg(feature = "failpoints")]
fn parse_rates(v: &str) -> Vec<(String, f64)> {
    v.split(',')
        .filter_map(|kv| {
            let (k, r) = kv.trim().split_once('=')?;
            let r: f64 = r.trim().parse().ok()?;
            (POINTS.contains(&k.trim()) && r > 0.0 && r <= 1.0).then(|| (k.trim().to_owned(), r))
        })
        .collect()
}

#[cfg(all(test, feature = "failpoints"))]
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
