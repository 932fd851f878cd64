//! JSON logs on stdout (CloudWatch parses them; the Lambda log format is set to JSON in the
//! template). Span fields such as `correlation_id` are flattened into every line of the span.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber once. The level comes from `RUST_LOG`, else
/// `AWS_LAMBDA_LOG_LEVEL` (set by Lambda's logging config), else `info`.
pub fn init() {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .or_else(|| std::env::var("AWS_LAMBDA_LOG_LEVEL").ok())
        .map(|l| l.to_lowercase())
        .unwrap_or_else(|| "info".to_owned());
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(EnvFilter::new(filter))
        .with_current_span(true)
        .with_span_list(false)
        .flatten_event(true)
        .with_target(false)
        .with_ansi(false)
        .try_init();
}

/// A correlation id: the caller's `x-correlation-id` when it is a sane token, else a new UUID.
pub fn correlation_id(given: Option<&str>) -> String {
    match given.map(str::trim) {
        Some(s)
            if !s.is_empty()
                && s.len() <= 128
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)) =>
        {
            s.to_owned()
        }
        _ => uuid::Uuid::new_v4().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_a_sane_caller_id_and_replaces_anything_else() {
        assert_eq!(correlation_id(Some("abc-123")), "abc-123");
        let made = correlation_id(Some("has space\nand newline"));
        assert_eq!(made.len(), 36);
        assert_ne!(correlation_id(None), correlation_id(None));
        assert_eq!(correlation_id(Some(&"x".repeat(129))).len(), 36);
    }
}
