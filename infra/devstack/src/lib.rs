//! Parts of the local stack that are ours: stand-ins for the third-party HTTP APIs (OpenAI's
//! Responses API and Meta's Graph API send endpoints) when no real credentials are given, the
//! demo tenant `make dev` seeds, the SQS event-source pump that plays Lambda's part between
//! the queues and the functions under `cargo lambda watch`, and the customer's side (signed
//! webhooks, and what came of them), and the fault harness that drives it all (`devstack load`).

pub mod demo;
pub mod load;
pub mod pump;
pub mod runtime;
pub mod seed;
pub mod stubs;

/// A port on 127.0.0.1 that was free a moment ago (for stacks the tests start beside others).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}
