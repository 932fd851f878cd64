//! CloudWatch metrics in the Embedded Metric Format: one JSON document per dimension set is
//! written to stdout at the end of each invocation, and CloudWatch Logs turns it into metrics
//! (no API call, no latency on the request path).
//!
//! Values are accumulated in memory during an invocation: counts are summed, timings are kept
//! as lists (EMF allows up to 100 values per metric per document, so percentiles stay exact).
//! Running totals are also kept for the life of the container; tests read them.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::{json, Map, Value};

/// Values per metric in one EMF document (the format's limit).
const MAX_VALUES: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Unit {
    Count,
    Milliseconds,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Milliseconds => "Milliseconds",
        }
    }
}

/// An extra dimension on top of `Service` (e.g. `ErrorCode`), low cardinality only.
type Dim = Option<(&'static str, String)>;

/// One metric's name, unit and values.
type Series = (&'static str, Unit, Vec<f64>);

#[derive(Default)]
struct Buffers {
    pending: BTreeMap<(Dim, &'static str), (Unit, Vec<f64>)>,
    totals: BTreeMap<String, f64>,
}

pub struct Metrics {
    namespace: String,
    service: &'static str,
    inner: Mutex<Buffers>,
    /// `false`: `flush` only clears (tests and benchmarks keep their stdout readable).
    emit: bool,
}

impl Metrics {
    pub fn new(namespace: impl Into<String>, service: &'static str) -> Self {
        Self {
            namespace: namespace.into(),
            service,
            inner: Mutex::new(Buffers::default()),
            emit: true,
        }
    }

    /// Like [`Metrics::new`], but `flush` writes nothing; totals are still kept.
    pub fn silent(namespace: impl Into<String>, service: &'static str) -> Self {
        Self {
            emit: false,
            ..Self::new(namespace, service)
        }
    }

    /// Adds `n` to a count.
    pub fn count(&self, name: &'static str, n: u64) {
        self.add(None, name, Unit::Count, n as f64);
    }

    /// Adds `n` to a count with one extra dimension, e.g. `("ErrorCode", "131047")`.
    pub fn count_by(&self, name: &'static str, dim: &'static str, value: String, n: u64) {
        self.add(Some((dim, value)), name, Unit::Count, n as f64);
    }

    /// Records one timing sample.
    pub fn millis(&self, name: &'static str, ms: f64) {
        self.add(None, name, Unit::Milliseconds, ms);
    }

    fn add(&self, dim: Dim, name: &'static str, unit: Unit, v: f64) {
        let mut b = crate::lock(&self.inner);
        let total_key = match &dim {
            Some((d, value)) => format!("{name}.{d}={value}"),
            None => name.to_owned(),
        };
        *b.totals.entry(total_key).or_default() += v;
        let (_, values) = b.pending.entry((dim, name)).or_insert((unit, Vec::new()));
        match unit {
            Unit::Count if !values.is_empty() => values[0] += v,
            _ => values.push(v),
        }
    }

    /// Running total since the container started: `name`, or `name.Dim=value` for a
    /// dimensioned count (sum of the samples for timings).
    pub fn total(&self, key: &str) -> f64 {
        let b = crate::lock(&self.inner);
        b.totals.get(key).copied().unwrap_or(0.0)
    }

    /// The EMF documents for everything recorded since the last flush, and clears it.
    pub fn take_documents(&self, timestamp_ms: i64) -> Vec<String> {
        let pending = std::mem::take(&mut crate::lock(&self.inner).pending);
        let mut by_dim: BTreeMap<Dim, Vec<Series>> = BTreeMap::new();
        for ((dim, name), (unit, values)) in pending {
            by_dim.entry(dim).or_default().push((name, unit, values));
        }
        let mut docs = Vec::new();
        for (dim, metrics) in by_dim {
            // Timings beyond 100 samples go into further documents.
            let rounds = metrics
                .iter()
                .map(|(_, _, v)| v.len().div_ceil(MAX_VALUES))
                .max()
                .unwrap_or(0);
            for round in 0..rounds {
                let mut doc = Map::new();
                let mut dims = vec!["Service"];
                doc.insert("Service".into(), json!(self.service));
                if let Some((d, value)) = &dim {
                    dims.push(d);
                    doc.insert((*d).into(), json!(value));
                }
                let mut defs = Vec::new();
                for (name, unit, values) in &metrics {
                    let chunk: Vec<f64> = values
                        .iter()
                        .skip(round * MAX_VALUES)
                        .take(MAX_VALUES)
                        .copied()
                        .collect();
                    if chunk.is_empty() {
                        continue;
                    }
                    defs.push(json!({"Name": name, "Unit": unit.as_str()}));
                    let value = if chunk.len() == 1 {
                        json!(chunk[0])
                    } else {
                        json!(chunk)
                    };
                    doc.insert((*name).into(), value);
                }
                doc.insert(
                    "_aws".into(),
                    json!({"Timestamp": timestamp_ms, "CloudWatchMetrics": [{
                        "Namespace": self.namespace, "Dimensions": [dims], "Metrics": defs}]}),
                );
                docs.push(Value::Object(doc).to_string());
            }
        }
        docs
    }

    /// Writes the pending documents to stdout, one line each (where Lambda's log agent reads them).
    pub fn flush(&self) {
        use std::io::Write;
        let docs = self.take_documents(crate::now_ms());
        if !self.emit {
            return;
        }
        let mut out = std::io::stdout().lock();
        for d in docs {
            let _ = writeln!(out, "{d}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_follow_the_embedded_metric_format() {
        let m = Metrics::new("AiAgent", "processor");
        m.count("RepliesSent", 1);
        m.count("RepliesSent", 2);
        m.millis("ModelLatency", 812.0);
        m.millis("ModelLatency", 1204.5);
        m.count_by("SendFailures", "ErrorCode", "131047".into(), 1);
        let docs: Vec<Value> = m
            .take_documents(1_767_225_600_000)
            .iter()
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert_eq!(docs.len(), 2, "one document per dimension set");
        let plain = &docs[0];
        assert_eq!(plain["Service"], "processor");
        assert_eq!(plain["RepliesSent"], 3.0);
        assert_eq!(plain["ModelLatency"], json!([812.0, 1204.5]));
        let meta = &plain["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(plain["_aws"]["Timestamp"], 1_767_225_600_000_i64);
        assert_eq!(meta["Namespace"], "AiAgent");
        assert_eq!(meta["Dimensions"], json!([["Service"]]));
        assert!(meta["Metrics"]
            .as_array()
            .unwrap()
            .contains(&json!({"Name": "ModelLatency", "Unit": "Milliseconds"})));
        let coded = &docs[1];
        assert_eq!(coded["ErrorCode"], "131047");
        assert_eq!(coded["SendFailures"], 1.0);
        assert_eq!(
            coded["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["Service", "ErrorCode"]])
        );
        assert!(m.take_documents(0).is_empty(), "flushed values are gone");
        assert_eq!(m.total("RepliesSent"), 3.0);
        assert_eq!(m.total("SendFailures.ErrorCode=131047"), 1.0);
    }

    #[test]
    fn more_than_one_hundred_samples_are_split_across_documents() {
        let m = Metrics::new("AiAgent", "processor");
        for i in 0..150 {
            m.millis("ModelLatency", i as f64);
        }
        m.count("MessagesProcessed", 150);
        let docs: Vec<Value> = m
            .take_documents(0)
            .iter()
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0]["ModelLatency"].as_array().unwrap().len(), 100);
        assert_eq!(docs[1]["ModelLatency"].as_array().unwrap().len(), 50);
        assert_eq!(docs[0]["MessagesProcessed"], 150.0);
        assert!(docs[1].get("MessagesProcessed").is_none(), "counted once");
    }
}
