//! Parts of the local stack that are ours: stand-ins for the third-party HTTP APIs (OpenAI's
//! Responses API and Meta's Graph API send endpoints) when no real credentials are given, the
//! demo tenant `make dev` seeds, the SQS event-source pump that plays Lambda's part between
//! the queues and the functions under `cargo lambda watch`, and the customer's side (signed
//! webhooks, and what came of them), and the fault harness that drives it all (`devstack load`).

pub mod demo;
pub mod load;
pub mod pump;
pub mod seed;
pub mod stubs;
