//! Parts of the local stack that are ours: stand-ins for the third-party HTTP APIs (OpenAI's
//! Responses API and Meta's Graph API send endpoints) when no real credentials are given, and
//! the demo tenant `make dev` seeds.

pub mod seed;
pub mod stubs;
