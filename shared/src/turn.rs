//! The turn engine's decisions: a pure state machine, no I/O.
//!
//! A **turn** is the unanswered inbound messages of one conversation answered together. Its
//! state is durable (the processor stores it before each side effect that follows), so any
//! redelivery resumes where the last invocation stopped:
//!
//! ```text
//! Asking ──answer──▶ Sending(part 0..n) ──all parts settled──▶ Settling ──record──▶ Recorded ──▶ Done
//!    │ empty / incomplete: ask once more with a larger budget, then fallback text or no reply
//!    └ rejected: fallback text (if any) or no reply
//! ```
//!
//! [`decide`] says what to do next from the stored state; [`apply`] folds what happened into
//! it. The processor is the loop `decide → perform (through its traits) → apply → store`.
//!
//! The rules that make a reply go out at most once:
//! - a part is marked [`PartState::Sending`] (durably) before its request is written; found in
//!   that state on resume, the send may or may not have reached Meta;
//! - WhatsApp echoes each send's `biz_opaque_callback_data` in its status webhooks, so a
//!   `Sending` part is resolved from the echo: seen → sent; no echo within
//!   [`Policy::echo_window_ms`] → sent once more (counted), then `Unknown`;
//! - Instagram has no such echo: a `Sending` part found on resume becomes `Unknown` (surfaced,
//!   never repeated); web chat "sends" by writing the row and marking the part in one
//!   transaction, so it is never ambiguous;
//! - an error *response* from Meta means not sent: retried by its class, or `Failed`;
//! - the model is never asked again once an answer is stored, and the charge is settled once,
//!   in the record step.

use serde::{Deserialize, Serialize};

/// The channel a turn answers on, as far as sending goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    Whatsapp,
    Instagram,
    Webchat,
}

impl Via {
    /// Whether the channel echoes a send's tag in its status webhooks.
    pub fn echoes_sends(self) -> bool {
        self == Via::Whatsapp
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Claimed (credits held); no answer stored yet.
    Asking,
    /// An answer (or fallback text) is stored as parts; they go out in order.
    Sending,
    /// Every part is settled: write the outbound rows and settle the charge.
    Settling,
    /// Recorded and charged; the follow-ups (extraction job) remain.
    Recorded,
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum PartState {
    Pending,
    /// The request is (about to be) written; `since_ms` is when.
    Sending {
        since_ms: i64,
    },
    Sent {
        provider_id: String,
    },
    /// Meta answered with an error: not sent.
    Failed {
        code: i64,
    },
    /// May or may not have reached the customer, and cannot be resolved: not repeated.
    Unknown,
    /// Not sent because an earlier part failed or a human took over.
    Skipped,
}

impl PartState {
    pub fn is_settled(&self) -> bool {
        !matches!(self, PartState::Pending | PartState::Sending { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    pub text: String,
    pub state: PartState,
    /// Requests written for this part (a resend after a missing echo makes it 2).
    pub attempts: u32,
    /// Error responses that said "try again" (rate limits, Meta 5xx with a code).
    pub rejections: u32,
}

impl Part {
    pub fn new(text: impl Into<String>) -> Self {
        Part {
            text: text.into(),
            state: PartState::Pending,
            attempts: 0,
            rejections: 0,
        }
    }
}

/// What the model produced that is not an answer to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoAnswer {
    /// No visible text (a reasoning model that used its budget thinking, or just nothing).
    Empty,
    /// `incomplete` (usually `max_output_tokens`).
    Incomplete,
    /// The model refused.
    Refusal,
}

/// Tokens the model billed for this turn, over all its calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
}

impl std::ops::Add for Usage {
    type Output = Usage;

    fn add(self, o: Usage) -> Usage {
        Usage {
            input_tokens: self.input_tokens.saturating_add(o.input_tokens),
            output_tokens: self.output_tokens.saturating_add(o.output_tokens),
            cached_tokens: self.cached_tokens.saturating_add(o.cached_tokens),
        }
    }
}

/// Why a turn ends without the model's answer going out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shortfall {
    /// Empty or incomplete twice (or refused).
    NoAnswer(NoAnswer),
    /// The model call failed permanently (bad request, quota, unknown model).
    ModelRejected,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    pub via: Via,
    pub phase: Phase,
    /// Model calls that came back (answer or not).
    pub model_calls: u32,
    /// The output budget of the next model call.
    pub budget: u32,
    pub usage: Usage,
    /// The model's response id, once answered (the conversation's next `previous_response_id`).
    pub response_id: Option<String>,
    pub shortfall: Option<Shortfall>,
    /// The parts carry the agent's fallback text rather than a model answer.
    pub fallback: bool,
    pub parts: Vec<Part>,
    /// A human took the conversation over while the turn was open.
    pub human_took_over: bool,
}

/// The knobs of the decisions, from the agent and the deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The agent's output budget for the first call.
    pub max_output_tokens: u32,
    /// The cap a retry's larger budget may not pass.
    pub max_output_cap: u32,
    /// Sent instead when the model gives no answer or fails permanently (`None`: no reply).
    pub fallback_text: Option<String>,
    /// How long a WhatsApp part in `Sending` waits for its status echo before it is resent.
    pub echo_window_ms: i64,
    /// Requests written per part at most (the first plus resends after a missing echo).
    pub max_send_attempts: u32,
    /// "Try again" error responses per part before it counts as failed.
    pub max_rejections: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_output_tokens: 800,
            max_output_cap: 4096,
            fallback_text: None,
            echo_window_ms: 30_000,
            max_send_attempts: 2,
            max_rejections: 12,
        }
    }
}

/// What the processor observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The model answered with text; `parts` is it split for the channel.
    Answered {
        response_id: String,
        parts: Vec<String>,
        usage: Usage,
    },
    /// The model came back without an answer to send (billed for `usage`).
    NoAnswer {
        kind: NoAnswer,
        response_id: Option<String>,
        usage: Usage,
    },
    /// The model call failed for good (no tokens billed).
    ModelRejected,
    /// The processor stored `Sending` for the part and is about to write the request.
    SendStarted {
        part: usize,
        now_ms: i64,
    },
    SendAccepted {
        part: usize,
        provider_id: String,
    },
    /// Meta answered with an error; `retryable` is its code's class.
    SendRejected {
        part: usize,
        code: i64,
        retryable: bool,
    },
    /// No response after the request was written (timeout, reset).
    SendAmbiguous {
        part: usize,
    },
    /// A status webhook echoed the part's tag.
    EchoSeen {
        part: usize,
        provider_id: String,
    },
    /// [`Action::GiveUp`] carried out.
    GaveUp {
        part: usize,
    },
    /// The conversation is in human mode now.
    HumanTookOver,
    Recorded,
    FollowUpsDone,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Call the model with this output budget.
    AskModel {
        max_output_tokens: u32,
    },
    /// Store `Sending` for the part, then send it (attempt `attempt`, 1-based) tagged `tag`.
    Send {
        part: usize,
        attempt: u32,
        tag: String,
    },
    /// A WhatsApp part whose send is unresolved: look for its echo; none yet → come back in
    /// `retry_in_ms`.
    AwaitEcho {
        part: usize,
        retry_in_ms: i64,
    },
    /// The part cannot be resolved: store it as `Unknown` (counted, alarmed, shown).
    GiveUp {
        part: usize,
    },
    /// Write the outbound rows and settle the charge for `usage`, releasing the hold, in one
    /// transaction.
    Record,
    /// Queue the extraction job.
    FollowUps,
    Finish,
}

/// Why an event does not fit the state (a bug in the caller, or a stale event).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event {event} does not apply in phase {phase:?}")]
pub struct Misfit {
    pub phase: Phase,
    pub event: &'static str,
}

/// What a turn came to, recorded on its inbound messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnOutcome {
    Replied,
    /// Some part was refused by Meta.
    SendFailed,
    /// Some part may or may not have arrived.
    SendUnknown,
    /// The fallback text went out (or nothing: no fallback configured) after no answer.
    NoAnswer,
    ModelRejected,
    HumanMode,
}

impl TurnOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            TurnOutcome::Replied => "replied",
            TurnOutcome::SendFailed => "send_failed",
            TurnOutcome::SendUnknown => "send_unknown",
            TurnOutcome::NoAnswer => "no_answer",
            TurnOutcome::ModelRejected => "model_rejected",
            TurnOutcome::HumanMode => "human_mode",
        }
    }
}

impl Turn {
    pub fn new(via: Via, policy: &Policy) -> Turn {
        Turn {
            via,
            phase: Phase::Asking,
            model_calls: 0,
            budget: policy.max_output_tokens.max(16),
            usage: Usage::default(),
            response_id: None,
            shortfall: None,
            fallback: false,
            parts: Vec::new(),
            human_took_over: false,
        }
    }

    /// The first part not settled yet.
    fn current(&self) -> Option<usize> {
        self.parts.iter().position(|p| !p.state.is_settled())
    }

    /// The outcome, once every part is settled.
    pub fn outcome(&self) -> TurnOutcome {
        let any = |f: fn(&PartState) -> bool| self.parts.iter().any(|p| f(&p.state));
        if any(|s| matches!(s, PartState::Failed { .. })) {
            TurnOutcome::SendFailed
        } else if any(|s| matches!(s, PartState::Unknown)) {
            TurnOutcome::SendUnknown
        } else if self.human_took_over && !any(|s| matches!(s, PartState::Sent { .. })) {
            TurnOutcome::HumanMode
        } else {
            match self.shortfall {
                Some(Shortfall::ModelRejected) => TurnOutcome::ModelRejected,
                Some(Shortfall::NoAnswer(_)) => TurnOutcome::NoAnswer,
                None if self.human_took_over
                    && self
                        .parts
                        .iter()
                        .any(|p| matches!(p.state, PartState::Skipped)) =>
                {
                    TurnOutcome::HumanMode
                }
                None => TurnOutcome::Replied,
            }
        }
    }

    /// Parts that reached the customer, with their provider ids, in order.
    pub fn sent_ids(&self) -> Vec<&str> {
        self.parts
            .iter()
            .filter_map(|p| match &p.state {
                PartState::Sent { provider_id } => Some(provider_id.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Phase after a change to the parts: sending until all are settled.
    fn settle_phase(&mut self) {
        if self.phase == Phase::Sending && self.current().is_none() {
            self.phase = Phase::Settling;
        }
    }

    /// Replaces the (empty) answer with the fallback text, or no parts at all.
    fn fall_back(&mut self, policy: &Policy, parts_of: impl Fn(&str) -> Vec<String>) {
        self.parts = policy
            .fallback_text
            .as_deref()
            .filter(|t| !t.trim().is_empty())
            .map(|t| parts_of(t).into_iter().map(Part::new).collect())
            .unwrap_or_default();
        self.fallback = !self.parts.is_empty();
        self.phase = Phase::Sending;
        self.settle_phase();
    }

    /// After a call without an answer: once more with a larger budget (not for a refusal,
    /// not past the cap), else the fallback.
    fn no_answer(
        &mut self,
        kind: NoAnswer,
        policy: &Policy,
        parts_of: impl Fn(&str) -> Vec<String>,
    ) {
        let larger = self.budget.saturating_mul(2).min(policy.max_output_cap);
        if kind != NoAnswer::Refusal && self.model_calls == 1 && larger > self.budget {
            self.budget = larger;
        } else {
            self.shortfall = Some(Shortfall::NoAnswer(kind));
            self.fall_back(policy, parts_of);
        }
    }

    fn skip_rest(&mut self, from: usize) {
        for p in self.parts.iter_mut().skip(from) {
            if p.state == PartState::Pending {
                p.state = PartState::Skipped;
            }
        }
    }
}

/// The send tag of a part's attempt (`biz_opaque_callback_data` on WhatsApp): the turn, the
/// part and the attempt, so an echo names exactly one request.
pub fn send_tag(turn_id: &str, part: usize, attempt: u32) -> String {
    format!("t:{turn_id}:{part}:{attempt}")
}

/// Reads a tag written by [`send_tag`]: `(turn id, part, attempt)`.
pub fn parse_send_tag(tag: &str) -> Option<(&str, usize, u32)> {
    let rest = tag.strip_prefix("t:")?;
    let mut it = rest.rsplitn(3, ':');
    let attempt = it.next()?.parse().ok()?;
    let part = it.next()?.parse().ok()?;
    let turn = it.next().filter(|t| !t.is_empty())?;
    Some((turn, part, attempt))
}

/// What to do next with `turn` at `now_ms`.
pub fn decide(turn: &Turn, turn_id: &str, now_ms: i64, policy: &Policy) -> Action {
    match turn.phase {
        Phase::Asking => Action::AskModel {
            max_output_tokens: turn.budget,
        },
        Phase::Sending => {
            let Some(i) = turn.current() else {
                return Action::Record;
            };
            let part = &turn.parts[i];
            match part.state {
                PartState::Pending => Action::Send {
                    part: i,
                    attempt: part.attempts + 1,
                    tag: send_tag(turn_id, i, part.attempts + 1),
                },
                PartState::Sending { since_ms } => match turn.via {
                    // The row and the part's state are written together: not sent.
                    Via::Webchat => Action::Send {
                        part: i,
                        attempt: part.attempts.max(1),
                        tag: send_tag(turn_id, i, part.attempts.max(1)),
                    },
                    Via::Instagram => Action::GiveUp { part: i },
                    Via::Whatsapp => {
                        let waited = now_ms - since_ms;
                        if waited < policy.echo_window_ms {
                            Action::AwaitEcho {
                                part: i,
                                retry_in_ms: policy.echo_window_ms - waited,
                            }
                        } else if part.attempts < policy.max_send_attempts {
                            Action::Send {
                                part: i,
                                attempt: part.attempts + 1,
                                tag: send_tag(turn_id, i, part.attempts + 1),
                            }
                        } else {
                            Action::GiveUp { part: i }
                        }
                    }
                },
                _ => unreachable!("current() returns unsettled parts only"),
            }
        }
        Phase::Settling => Action::Record,
        Phase::Recorded => Action::FollowUps,
        Phase::Done => Action::Finish,
    }
}

/// Folds `event` into `turn`. `parts_of` splits a text into channel-sized parts (for the
/// fallback text).
pub fn apply(
    mut turn: Turn,
    event: Event,
    policy: &Policy,
    parts_of: impl Fn(&str) -> Vec<String>,
) -> Result<Turn, Misfit> {
    let misfit = |turn: &Turn, event: &'static str| Misfit {
        phase: turn.phase,
        event,
    };
    match event {
        Event::Answered {
            response_id,
            parts,
            usage,
        } => {
            if turn.phase != Phase::Asking {
                return Err(misfit(&turn, "answered"));
            }
            turn.model_calls += 1;
            turn.usage = turn.usage + usage;
            turn.response_id = Some(response_id);
            let parts: Vec<Part> = parts
                .into_iter()
                .filter(|p| !p.trim().is_empty())
                .map(Part::new)
                .collect();
            if parts.is_empty() {
                // Text of nothing but whitespace: no answer.
                turn.no_answer(NoAnswer::Empty, policy, parts_of);
            } else {
                turn.parts = parts;
                turn.phase = Phase::Sending;
            }
        }
        Event::NoAnswer {
            kind,
            response_id,
            usage,
        } => {
            if turn.phase != Phase::Asking {
                return Err(misfit(&turn, "no_answer"));
            }
            turn.model_calls += 1;
            turn.usage = turn.usage + usage;
            if response_id.is_some() {
                turn.response_id = response_id;
            }
            turn.no_answer(kind, policy, parts_of);
        }
        Event::ModelRejected => {
            if turn.phase != Phase::Asking {
                return Err(misfit(&turn, "model_rejected"));
            }
            turn.shortfall = Some(Shortfall::ModelRejected);
            turn.fall_back(policy, parts_of);
        }
        Event::SendStarted { part, now_ms } => {
            let via = turn.via;
            let p = pending_part(&mut turn, part, "send_started")?;
            // A web chat part found in `Sending` was not written (row and state go together):
            // starting it again is not a second request.
            if !(via == Via::Webchat && matches!(p.state, PartState::Sending { .. })) {
                p.attempts += 1;
            }
            p.state = PartState::Sending { since_ms: now_ms };
        }
        Event::SendAccepted { part, provider_id } | Event::EchoSeen { part, provider_id } => {
            let p = pending_part(&mut turn, part, "send_accepted")?;
            if !matches!(p.state, PartState::Sending { .. }) {
                return Err(misfit(&turn, "send_accepted"));
            }
            p.state = PartState::Sent { provider_id };
            turn.settle_phase();
        }
        Event::SendRejected {
            part,
            code,
            retryable,
        } => {
            let max = policy.max_rejections;
            let p = pending_part(&mut turn, part, "send_rejected")?;
            if !matches!(p.state, PartState::Sending { .. }) {
                return Err(misfit(&turn, "send_rejected"));
            }
            // An error response: this request was not sent, so it does not count as one
            // that may have reached the customer.
            p.attempts -= 1;
            p.rejections += 1;
            if retryable && p.rejections < max {
                p.state = PartState::Pending;
            } else {
                p.state = PartState::Failed { code };
                turn.skip_rest(part + 1);
            }
            turn.settle_phase();
        }
        Event::SendAmbiguous { part } => {
            let via = turn.via;
            let p = pending_part(&mut turn, part, "send_ambiguous")?;
            if !matches!(p.state, PartState::Sending { .. }) {
                return Err(misfit(&turn, "send_ambiguous"));
            }
            match via {
                // Stays `Sending`: the echo decides (decide → AwaitEcho).
                Via::Whatsapp => {}
                // No echo to wait for: surfaced, not repeated; the next parts still go.
                Via::Instagram => p.state = PartState::Unknown,
                // The row was not written: not sent.
                Via::Webchat => {
                    p.attempts -= 1;
                    p.state = PartState::Pending;
                }
            }
            turn.settle_phase();
        }
        Event::GaveUp { part } => {
            let p = pending_part(&mut turn, part, "gave_up")?;
            if !matches!(p.state, PartState::Sending { .. }) {
                return Err(misfit(&turn, "gave_up"));
            }
            p.state = PartState::Unknown;
            turn.settle_phase();
        }
        Event::HumanTookOver => match turn.phase {
            Phase::Asking => {
                turn.human_took_over = true;
                turn.parts.clear();
                turn.phase = Phase::Settling;
            }
            Phase::Sending => {
                turn.human_took_over = true;
                // A part in flight stays to be resolved; nothing new goes out.
                let from = turn.current().unwrap_or(turn.parts.len());
                turn.skip_rest(from);
                turn.settle_phase();
            }
            // Everything already went out: the handoff changes nothing for this turn.
            _ => {}
        },
        Event::Recorded => {
            if turn.phase != Phase::Settling {
                return Err(misfit(&turn, "recorded"));
            }
            turn.phase = Phase::Recorded;
        }
        Event::FollowUpsDone => {
            if turn.phase != Phase::Recorded {
                return Err(misfit(&turn, "follow_ups_done"));
            }
            turn.phase = Phase::Done;
        }
    }
    Ok(turn)
}

fn pending_part<'t>(
    turn: &'t mut Turn,
    part: usize,
    event: &'static str,
) -> Result<&'t mut Part, Misfit> {
    let phase = turn.phase;
    // Only the current part may change: parts go out strictly in order.
    if phase != Phase::Sending || turn.current() != Some(part) {
        return Err(Misfit { phase, event });
    }
    Ok(&mut turn.parts[part])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(t: &str) -> Vec<String> {
        t.split("|").map(str::to_owned).collect()
    }

    fn step(turn: Turn, e: Event, policy: &Policy) -> Turn {
        apply(turn, e, policy, split).expect("fits")
    }

    fn answered(parts: &[&str]) -> Event {
        Event::Answered {
            response_id: "resp_1".into(),
            parts: parts.iter().map(|s| s.to_string()).collect(),
            usage: Usage {
                input_tokens: 100,
                output_tokens: 20,
                cached_tokens: 0,
            },
        }
    }

    fn send_ok(turn: Turn, part: usize, p: &Policy) -> Turn {
        let t = step(turn, Event::SendStarted { part, now_ms: 0 }, p);
        step(
            t,
            Event::SendAccepted {
                part,
                provider_id: format!("wamid.{part}"),
            },
            p,
        )
    }

    #[test]
    fn the_happy_path_asks_once_sends_each_part_in_order_and_records_once() {
        let p = Policy::default();
        let mut t = Turn::new(Via::Whatsapp, &p);
        assert_eq!(
            decide(&t, "T", 0, &p),
            Action::AskModel {
                max_output_tokens: 800
            }
        );
        t = step(t, answered(&["a", "b"]), &p);
        assert_eq!(
            decide(&t, "T", 0, &p),
            Action::Send {
                part: 0,
                attempt: 1,
                tag: "t:T:0:1".into()
            }
        );
        t = send_ok(t, 0, &p);
        assert_eq!(
            decide(&t, "T", 0, &p),
            Action::Send {
                part: 1,
                attempt: 1,
                tag: "t:T:1:1".into()
            }
        );
        t = send_ok(t, 1, &p);
        assert_eq!(t.phase, Phase::Settling);
        assert_eq!(decide(&t, "T", 0, &p), Action::Record);
        t = step(t, Event::Recorded, &p);
        assert_eq!(decide(&t, "T", 0, &p), Action::FollowUps);
        t = step(t, Event::FollowUpsDone, &p);
        assert_eq!(decide(&t, "T", 0, &p), Action::Finish);
        assert_eq!(t.outcome(), TurnOutcome::Replied);
        assert_eq!(t.sent_ids(), vec!["wamid.0", "wamid.1"]);
        assert_eq!(t.usage.input_tokens, 100);
    }

    #[test]
    fn a_stored_answer_is_never_asked_for_again() {
        let p = Policy::default();
        let t = step(Turn::new(Via::Whatsapp, &p), answered(&["a"]), &p);
        for phase_turn in [
            t.clone(),
            step(t.clone(), Event::SendStarted { part: 0, now_ms: 0 }, &p),
            send_ok(t.clone(), 0, &p),
        ] {
            for now in [0, 10_000, 1_000_000] {
                assert!(!matches!(
                    decide(&phase_turn, "T", now, &p),
                    Action::AskModel { .. }
                ));
            }
            assert!(apply(phase_turn, answered(&["again"]), &p, split).is_err());
        }
    }

    #[test]
    fn whatsapp_ambiguous_send_waits_for_its_echo_then_resends_once_then_gives_up() {
        let p = Policy::default();
        let mut t = step(Turn::new(Via::Whatsapp, &p), answered(&["a", "b"]), &p);
        t = step(
            t,
            Event::SendStarted {
                part: 0,
                now_ms: 1_000,
            },
            &p,
        );
        t = step(t, Event::SendAmbiguous { part: 0 }, &p);
        assert_eq!(
            decide(&t, "T", 11_000, &p),
            Action::AwaitEcho {
                part: 0,
                retry_in_ms: 20_000
            }
        );
        // The echo resolves it: sent, and no second request.
        let echoed = step(
            t.clone(),
            Event::EchoSeen {
                part: 0,
                provider_id: "wamid.E".into(),
            },
            &p,
        );
        assert_eq!(echoed.parts[0].attempts, 1);
        assert!(matches!(
            decide(&echoed, "T", 11_000, &p),
            Action::Send { part: 1, .. }
        ));
        // No echo within the window: resent once, with a new tag.
        assert_eq!(
            decide(&t, "T", 31_000, &p),
            Action::Send {
                part: 0,
                attempt: 2,
                tag: "t:T:0:2".into()
            }
        );
        t = step(
            t,
            Event::SendStarted {
                part: 0,
                now_ms: 31_000,
            },
            &p,
        );
        t = step(t, Event::SendAmbiguous { part: 0 }, &p);
        assert!(matches!(
            decide(&t, "T", 40_000, &p),
            Action::AwaitEcho { .. }
        ));
        // Ambiguous again and no echo: never a third request.
        assert_eq!(decide(&t, "T", 70_000, &p), Action::GiveUp { part: 0 });
        t = step(t, Event::GaveUp { part: 0 }, &p);
        assert_eq!(t.parts[0].state, PartState::Unknown);
        // The rest of the reply still goes; the outcome says one part is unknown.
        assert!(matches!(
            decide(&t, "T", 70_000, &p),
            Action::Send { part: 1, .. }
        ));
        t = send_ok(t, 1, &p);
        assert_eq!(t.outcome(), TurnOutcome::SendUnknown);
    }

    #[test]
    fn a_crash_after_marking_sending_resumes_by_channel() {
        let p = Policy::default();
        for (via, expect_at_60s) in [
            (Via::Whatsapp, "resend"),
            (Via::Instagram, "give_up"),
            (Via::Webchat, "resend"),
        ] {
            let t = step(Turn::new(via, &p), answered(&["a"]), &p);
            // Crash: Sending stored, no response seen.
            let t = step(t, Event::SendStarted { part: 0, now_ms: 0 }, &p);
            let early = decide(&t, "T", 1_000, &p);
            let late = decide(&t, "T", 60_000, &p);
            match via {
                Via::Whatsapp => assert!(matches!(early, Action::AwaitEcho { .. })),
                Via::Instagram => assert_eq!(early, Action::GiveUp { part: 0 }),
                Via::Webchat => assert!(matches!(early, Action::Send { part: 0, .. })),
            }
            match expect_at_60s {
                "resend" => assert!(matches!(late, Action::Send { part: 0, .. }), "{via:?}"),
                _ => assert_eq!(late, Action::GiveUp { part: 0 }),
            }
        }
    }

    #[test]
    fn instagram_ambiguity_is_surfaced_not_repeated() {
        let p = Policy::default();
        let mut t = step(Turn::new(Via::Instagram, &p), answered(&["a", "b"]), &p);
        t = step(t, Event::SendStarted { part: 0, now_ms: 0 }, &p);
        t = step(t, Event::SendAmbiguous { part: 0 }, &p);
        assert_eq!(t.parts[0].state, PartState::Unknown);
        assert_eq!(t.parts[0].attempts, 1);
        assert!(matches!(
            decide(&t, "T", 0, &p),
            Action::Send {
                part: 1,
                attempt: 1,
                ..
            }
        ));
    }

    #[test]
    fn error_responses_are_not_sends_retryable_ones_try_again_then_fail() {
        let p = Policy {
            max_rejections: 3,
            ..Policy::default()
        };
        let mut t = step(Turn::new(Via::Whatsapp, &p), answered(&["a", "b"]), &p);
        for round in 1..=3 {
            t = step(t, Event::SendStarted { part: 0, now_ms: 0 }, &p);
            t = step(
                t,
                Event::SendRejected {
                    part: 0,
                    code: 130429,
                    retryable: true,
                },
                &p,
            );
            assert_eq!(t.parts[0].attempts, 0, "an error response sent nothing");
            if round < 3 {
                assert_eq!(t.parts[0].state, PartState::Pending);
                assert!(matches!(
                    decide(&t, "T", 0, &p),
                    Action::Send {
                        part: 0,
                        attempt: 1,
                        ..
                    }
                ));
            }
        }
        assert_eq!(t.parts[0].state, PartState::Failed { code: 130429 });
        assert_eq!(t.parts[1].state, PartState::Skipped);
        assert_eq!(decide(&t, "T", 0, &p), Action::Record);
        assert_eq!(t.outcome(), TurnOutcome::SendFailed);
    }

    #[test]
    fn a_permanent_error_fails_the_part_and_skips_the_rest() {
        let p = Policy::default();
        let mut t = step(Turn::new(Via::Whatsapp, &p), answered(&["a", "b", "c"]), &p);
        t = send_ok(t, 0, &p);
        t = step(t, Event::SendStarted { part: 1, now_ms: 0 }, &p);
        t = step(
            t,
            Event::SendRejected {
                part: 1,
                code: 131047,
                retryable: false,
            },
            &p,
        );
        assert_eq!(t.parts[2].state, PartState::Skipped);
        assert_eq!(t.phase, Phase::Settling);
        assert_eq!(t.outcome(), TurnOutcome::SendFailed);
        assert_eq!(t.sent_ids(), vec!["wamid.0"]);
    }

    #[test]
    fn an_empty_answer_is_asked_again_with_a_larger_budget_then_falls_back() {
        let with_fallback = Policy {
            fallback_text: Some("Un momento|por favor".into()),
            ..Policy::default()
        };
        let billed = Usage {
            input_tokens: 50,
            output_tokens: 800,
            cached_tokens: 0,
        };
        for kind in [NoAnswer::Empty, NoAnswer::Incomplete] {
            let mut t = Turn::new(Via::Whatsapp, &with_fallback);
            t = step(
                t,
                Event::NoAnswer {
                    kind,
                    response_id: None,
                    usage: billed,
                },
                &with_fallback,
            );
            assert_eq!(
                decide(&t, "T", 0, &with_fallback),
                Action::AskModel {
                    max_output_tokens: 1600
                }
            );
            t = step(
                t,
                Event::NoAnswer {
                    kind,
                    response_id: Some("resp_2".into()),
                    usage: billed,
                },
                &with_fallback,
            );
            assert!(t.fallback);
            assert_eq!(t.parts.len(), 2);
            assert_eq!(t.usage.output_tokens, 1600, "both calls are charged");
            assert_eq!(t.response_id.as_deref(), Some("resp_2"));
            t = send_ok(t, 0, &with_fallback);
            t = send_ok(t, 1, &with_fallback);
            assert_eq!(t.outcome(), TurnOutcome::NoAnswer, "never `replied`");
        }
        // No fallback configured: nothing to send, straight to the record (the tokens).
        let p = Policy::default();
        let mut t = Turn::new(Via::Whatsapp, &p);
        for _ in 0..2 {
            t = step(
                t,
                Event::NoAnswer {
                    kind: NoAnswer::Empty,
                    response_id: None,
                    usage: billed,
                },
                &p,
            );
        }
        assert!(t.parts.is_empty());
        assert_eq!(decide(&t, "T", 0, &p), Action::Record);
        assert_eq!(t.outcome(), TurnOutcome::NoAnswer);
    }

    #[test]
    fn a_refusal_is_not_asked_again_and_whitespace_is_no_answer() {
        let p = Policy::default();
        let t = step(
            Turn::new(Via::Instagram, &p),
            Event::NoAnswer {
                kind: NoAnswer::Refusal,
                response_id: None,
                usage: Usage::default(),
            },
            &p,
        );
        assert_eq!(t.phase, Phase::Settling);
        assert_eq!(t.shortfall, Some(Shortfall::NoAnswer(NoAnswer::Refusal)));
        let blank = step(Turn::new(Via::Whatsapp, &p), answered(&["  ", "\n"]), &p);
        assert_eq!(blank.phase, Phase::Asking, "asked once more");
        assert_eq!(blank.budget, 1600);
        assert_eq!(
            blank.usage.output_tokens, 20,
            "the blank answer's tokens count"
        );
        assert_eq!(blank.model_calls, 1);
    }

    #[test]
    fn a_budget_at_the_cap_is_not_asked_again() {
        let p = Policy {
            max_output_tokens: 4096,
            max_output_cap: 4096,
            ..Policy::default()
        };
        let t = step(
            Turn::new(Via::Whatsapp, &p),
            Event::NoAnswer {
                kind: NoAnswer::Incomplete,
                response_id: None,
                usage: Usage::default(),
            },
            &p,
        );
        assert_eq!(t.phase, Phase::Settling);
    }

    #[test]
    fn a_rejected_model_call_sends_the_fallback_and_says_so() {
        let p = Policy {
            fallback_text: Some("Estamos con problemas".into()),
            ..Policy::default()
        };
        let mut t = step(Turn::new(Via::Whatsapp, &p), Event::ModelRejected, &p);
        assert!(matches!(
            decide(&t, "T", 0, &p),
            Action::Send { part: 0, .. }
        ));
        t = send_ok(t, 0, &p);
        assert_eq!(t.outcome(), TurnOutcome::ModelRejected);
    }

    #[test]
    fn a_handoff_stops_what_has_not_gone_out() {
        let p = Policy::default();
        // Before the answer: nothing is sent.
        let t = step(Turn::new(Via::Whatsapp, &p), Event::HumanTookOver, &p);
        assert_eq!(decide(&t, "T", 0, &p), Action::Record);
        assert_eq!(t.outcome(), TurnOutcome::HumanMode);
        // Between parts: the rest is skipped.
        let mut t = step(Turn::new(Via::Whatsapp, &p), answered(&["a", "b", "c"]), &p);
        t = send_ok(t, 0, &p);
        t = step(t, Event::HumanTookOver, &p);
        assert_eq!(t.parts[1].state, PartState::Skipped);
        assert_eq!(t.parts[2].state, PartState::Skipped);
        assert_eq!(decide(&t, "T", 0, &p), Action::Record);
        assert_eq!(t.outcome(), TurnOutcome::HumanMode);
        // A part in flight is still resolved.
        let mut t = step(Turn::new(Via::Whatsapp, &p), answered(&["a", "b"]), &p);
        t = step(t, Event::SendStarted { part: 0, now_ms: 0 }, &p);
        t = step(t, Event::HumanTookOver, &p);
        assert!(matches!(t.parts[0].state, PartState::Sending { .. }));
        assert_eq!(t.parts[1].state, PartState::Skipped);
        // After everything went out: no change.
        let mut t = step(Turn::new(Via::Whatsapp, &p), answered(&["a"]), &p);
        t = send_ok(t, 0, &p);
        let after = step(t.clone(), Event::HumanTookOver, &p);
        assert_eq!(after, t);
    }

    #[test]
    fn events_out_of_order_are_refused() {
        let p = Policy::default();
        let t = Turn::new(Via::Whatsapp, &p);
        assert!(apply(
            t.clone(),
            Event::SendStarted { part: 0, now_ms: 0 },
            &p,
            split
        )
        .is_err());
        assert!(apply(t.clone(), Event::Recorded, &p, split).is_err());
        assert!(apply(t.clone(), Event::FollowUpsDone, &p, split).is_err());
        let t = step(t, answered(&["a", "b"]), &p);
        // Part 1 before part 0 is settled.
        assert!(apply(
            t.clone(),
            Event::SendStarted { part: 1, now_ms: 0 },
            &p,
            split
        )
        .is_err());
        // A response for a part that was never started.
        assert!(apply(
            t.clone(),
            Event::SendAccepted {
                part: 0,
                provider_id: "x".into()
            },
            &p,
            split
        )
        .is_err());
        assert!(apply(t.clone(), Event::Recorded, &p, split).is_err());
        let sent = send_ok(t, 0, &p);
        assert!(apply(
            sent,
            Event::SendAccepted {
                part: 0,
                provider_id: "again".into()
            },
            &p,
            split
        )
        .is_err());
    }

    #[test]
    fn tags_round_trip() {
        let tag = send_tag("0b6c1c1e-7f7a-4a53-9d1e-2f0c7d6b5a41", 3, 2);
        assert_eq!(
            parse_send_tag(&tag),
            Some(("0b6c1c1e-7f7a-4a53-9d1e-2f0c7d6b5a41", 3, 2))
        );
        for bad in [
            "",
            "t:",
            "t::1:1",
            "x:a:1:1",
            "t:a:b:1",
            "t:a:1:x",
            "campaign-42",
        ] {
            assert_eq!(parse_send_tag(bad), None, "{bad}");
        }
    }

    /// Every sequence of adversities up to a depth, driven through decide → apply with crash
    /// points anywhere: whatever happens, no part gets more requests than the policy allows,
    /// the model is asked at most twice, parts settle in order, and every run ends recorded.
    #[test]
    fn exhaustive_runs_keep_the_invariants() {
        #[derive(Clone, Copy, Debug)]
        enum Fate {
            Ok,
            Ambiguous,
            Crash,
            Retryable,
            Permanent,
            Echo,
        }
        let fates = [
            Fate::Ok,
            Fate::Ambiguous,
            Fate::Crash,
            Fate::Retryable,
            Fate::Permanent,
            Fate::Echo,
        ];
        let p = Policy {
            fallback_text: Some("fb".into()),
            max_rejections: 2,
            ..Policy::default()
        };
        let depth = 6;
        let mut runs = 0;
        for via in [Via::Whatsapp, Via::Instagram, Via::Webchat] {
            for first in [0u8, 1, 2] {
                // 6^depth fate sequences.
                for code in 0..fates.len().pow(depth) {
                    let mut seq = Vec::new();
                    let mut c = code;
                    for _ in 0..depth {
                        seq.push(fates[c % fates.len()]);
                        c /= fates.len();
                    }
                    let mut t = Turn::new(via, &p);
                    t = match first {
                        0 => step(t, answered(&["a", "b"]), &p),
                        1 => step(
                            step(
                                t,
                                Event::NoAnswer {
                                    kind: NoAnswer::Empty,
                                    response_id: None,
                                    usage: Usage::default(),
                                },
                                &p,
                            ),
                            answered(&["a"]),
                            &p,
                        ),
                        _ => step(t, Event::ModelRejected, &p),
                    };
                    let mut now = 0i64;
                    let mut fate = seq.into_iter();
                    let mut steps = 0;
                    let mut sends = vec![0u32; t.parts.len()];
                    loop {
                        steps += 1;
                        assert!(steps < 100, "no progress: {t:?}");
                        now += 10_000;
                        match decide(&t, "T", now, &p) {
                            Action::AskModel { .. } => panic!("asked again: {t:?}"),
                            Action::Send { part, .. } => {
                                assert!(
                                    t.parts[..part].iter().all(|q| q.state.is_settled()),
                                    "in order"
                                );
                                t = step(t, Event::SendStarted { part, now_ms: now }, &p);
                                sends[part] += 1;
                                let e = match fate.next().unwrap_or(Fate::Ok) {
                                    Fate::Ok => Event::SendAccepted {
                                        part,
                                        provider_id: "id".into(),
                                    },
                                    Fate::Ambiguous | Fate::Echo => Event::SendAmbiguous { part },
                                    // The process dies: nothing more is applied; the next
                                    // loop is the redelivery.
                                    Fate::Crash => continue,
                                    Fate::Retryable => Event::SendRejected {
                                        part,
                                        code: 131000,
                                        retryable: true,
                                    },
                                    Fate::Permanent => Event::SendRejected {
                                        part,
                                        code: 131026,
                                        retryable: false,
                                    },
                                };
                                if matches!(e, Event::SendRejected { .. }) {
                                    sends[part] -= 1;
                                }
                                t = step(t, e, &p);
                            }
                            Action::AwaitEcho { part, .. } => {
                                if let Some(Fate::Echo) = fate.next() {
                                    t = step(
                                        t,
                                        Event::EchoSeen {
                                            part,
                                            provider_id: "echo".into(),
                                        },
                                        &p,
                                    );
                                }
                            }
                            Action::GiveUp { part } => t = step(t, Event::GaveUp { part }, &p),
                            Action::Record => t = step(t, Event::Recorded, &p),
                            Action::FollowUps => t = step(t, Event::FollowUpsDone, &p),
                            Action::Finish => break,
                        }
                    }
                    runs += 1;
                    for (i, q) in t.parts.iter().enumerate() {
                        assert!(q.state.is_settled());
                        let limit = match via {
                            Via::Whatsapp => p.max_send_attempts,
                            // Unresolvable after one request; a database write.
                            Via::Instagram | Via::Webchat => 1,
                        };
                        assert!(q.attempts <= limit, "{via:?} part {i}: {q:?}");
                        if via != Via::Webchat {
                            assert!(sends[i] <= limit, "{via:?} part {i}: {} requests", sends[i]);
                        }
                    }
                    assert!(t.model_calls <= 2);
                    // A failed part means nothing after it went out.
                    if let Some(f) = t
                        .parts
                        .iter()
                        .position(|q| matches!(q.state, PartState::Failed { .. }))
                    {
                        assert!(t.parts[f + 1..]
                            .iter()
                            .all(|q| q.state == PartState::Skipped));
                    }
                    let outcome = t.outcome();
                    if outcome == TurnOutcome::Replied {
                        assert!(t
                            .parts
                            .iter()
                            .all(|q| matches!(q.state, PartState::Sent { .. })));
                        assert!(!t.fallback);
                    }
                }
            }
        }
        assert_eq!(runs, 3 * 3 * 6usize.pow(depth));
    }
}
