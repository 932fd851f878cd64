//! The network guard on a real function binary: configured for real AWS under
//! `NETWORK_GUARD=loopback`, the webhook stops at start-up and says why.

use std::process::Command;

fn start_webhook(aws_endpoint: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_webhook"))
        .env_clear()
        .env("NETWORK_GUARD", "loopback")
        .env("AWS_ENDPOINT_URL", aws_endpoint)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env(
            "INBOUND_QUEUE_URL",
            "https://sqs.us-east-1.amazonaws.com/123456789012/inbound.fifo",
        )
        .env(
            "STATUS_QUEUE_URL",
            "https://sqs.us-east-1.amazonaws.com/123456789012/status",
        )
        .env("META_APP_SECRET", "s")
        .env("META_VERIFY_TOKEN", "v")
        // No Lambda runtime API: past start-up the binary fails for that reason instead.
        .env("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9")
        .output()
        .expect("the webhook binary runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn a_function_pointed_at_real_aws_stops_at_start_up() {
    let (ok, log) = start_webhook("https://sqs.us-east-1.amazonaws.com");
    assert!(!ok);
    assert!(log.contains("webhook cannot start"), "{log}");
    assert!(
        log.contains("AWS_ENDPOINT_URL is not a loopback address (sqs.us-east-1.amazonaws.com)"),
        "{log}"
    );

    // The control: with the emulator's address the guard lets it through (and the binary
    // goes on to fail on the missing Lambda runtime, not on the guard).
    let (_, log) = start_webhook("http://127.0.0.1:4566");
    assert!(!log.contains("network guard"), "{log}");
    assert!(!log.contains("not a loopback address"), "{log}");
}
