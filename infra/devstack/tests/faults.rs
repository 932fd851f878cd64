//! The short fault run of `make test`: `make load`'s script (infra/scripts/load.sh) on a stack
//! of its own (moto, Postgres, the stub upstreams, the functions under `cargo lambda watch`, the
//! pump), with every stub fault and every crash point on and one Postgres restart, a few hundred
//! messages (200). It passes only if the harness finds 0 lost, 0 duplicate replies, 0 order
//! violations, charges = deliveries, every message answered and no lane stalled past the limit.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use devstack::free_port;

#[test]
fn a_short_fault_run_loses_nothing_and_never_replies_or_charges_twice() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    // Under target/ (not /tmp): Postgres runs as its own user and must reach the directory.
    let state = root.join(format!("target/fault-run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let status = Command::new(root.join("infra/scripts/load.sh"))
        .current_dir(&root)
        .env("LOAD_STATE_DIR", &state)
        .env("LOAD_STACK", format!("faults{}", std::process::id()))
        .env("LOAD_WATCH_PORT", free_port().to_string())
        .env("LOAD_MOTO_PORT", free_port().to_string())
        .env("LOAD_PG_PORT", free_port().to_string())
        .env("LOAD_STUB_PORT", free_port().to_string())
        .env("LOAD_FAUXQS_PORT", free_port().to_string())
        .env("LOAD_CONVERSATIONS", "20")
        .env("LOAD_MESSAGES", "10")
        .env("LOAD_DUPLICATES", "0.2")
        .env("LOAD_GAP_MS", "400")
        .env(
            "LOAD_FAULTS",
            "openai_429=0.05,openai_500=0.05,openai_slow=0.005,openai_reset=0.03,\
             graph_5xx=0.05,graph_accept_5xx=0.03,graph_reset=0.03",
        )
        .env(
            "FAIL_POINTS",
            "after_claim=0.004,after_model=0.004,before_send=0.004,after_send=0.004,\
             before_record=0.004,after_record=0.004",
        )
        .env("LOAD_DRAIN_SECS", "480")
        .env_remove("ORDERING_SCOPE")
        .status()
        .expect("infra/scripts/load.sh runs");
    let report: Value = serde_json::from_slice(
        &std::fs::read(state.join("load-report.json")).expect("the run wrote its report"),
    )
    .unwrap();
    let keep_logs = || format!("the stack's logs are in {}", state.display());
    assert!(status.success(), "the fault run failed; {}", keep_logs());
    assert_eq!(report["messages"], 200, "{}", keep_logs());
    let violations = &report["violations"];
    for (name, n) in violations.as_object().unwrap() {
        assert_eq!(n, 0, "{name}; {}", keep_logs());
    }
    // The faults really happened: a run that injected nothing proves nothing.
    let injected = &report["faults_injected"];
    for kind in [
        "openai_429",
        "openai_500",
        "graph_5xx",
        "graph_accept_5xx",
        "graph_reset",
    ] {
        assert!(
            injected[kind].as_u64().unwrap_or(0) > 0,
            "no {kind} injected: {injected}"
        );
    }
    assert!(
        report["crashes"].as_u64().unwrap_or(0) > 0,
        "no crash point fired"
    );
    assert!(report["postgres_restarted_at_s"].is_number());
    assert!(report["duplicate_deliveries"].as_u64().unwrap() > 0);
    let _ = std::fs::remove_dir_all(&state);
}
