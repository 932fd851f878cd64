//! A fixed loop over the webhook hot path for instruction counting, which unlike wall time is
//! repeatable on a shared machine:
//!   cargo bench -p shared --bench ingest      # writes target/ingest-body-2kb.json
//!   cargo build --release -p shared --example ingest_loop
//!   valgrind --tool=callgrind target/release/examples/ingest_loop [verify|parse|all]
//! Divide the reported `I refs` (minus the `none` run's start-up cost) by ITERATIONS.

const ITERATIONS: usize = 2000;

fn main() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/ingest-body-2kb.json"
    );
    let body = std::fs::read(path).expect("run the ingest benchmark once first");
    let key = shared::signature::SignatureKey::new(b"a-32-byte-meta-app-secret-value!");
    let sig = key.sign(&body);
    let mode = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    let mut bytes = 0;
    for _ in 0..ITERATIONS {
        if mode == "none" {
            continue;
        }
        if mode != "parse" {
            key.verify(&body, Some(&sig)).expect("valid signature");
        }
        if mode != "verify" {
            let parsed =
                shared::meta::parse_webhook(&body, "c0ffee00-0000-4000-8000-000000000000", 0)
                    .expect("parses");
            for e in parsed.inbound {
                let m = shared::wire::inbound_message(
                    e,
                    shared::ordering::OrderingScope::ChannelAccount,
                );
                bytes += m.body.len();
            }
        }
    }
    println!("{mode}: {ITERATIONS} iterations, {bytes} envelope bytes");
}
