//! Credit arithmetic of a turn, pure: the hold placed before the model is asked, the gate
//! that holds apply, and the settlement from the tokens actually billed.
//!
//! A hold reserves the most a turn can cost (its input estimate and the output budget of every
//! model call it may make, at the agent's prices), so concurrent turns near a zero balance
//! cannot all pass the gate: each sees the others' holds. The record step settles the hold
//! into one charge for the billed usage and releases the rest; a turn that fails releases its
//! hold whole; a hold left by a crashed invocation expires.

use crate::turn::Usage;

/// Credits for `tokens` at `per_1k` credits per 1,000 tokens, rounded up.
pub fn price(per_1k: i64, tokens: u64) -> i64 {
    i64::try_from(tokens)
        .unwrap_or(i64::MAX)
        .saturating_mul(per_1k)
        .saturating_add(999)
        / 1000
}

/// Credits per 1,000 tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Prices {
    pub input_per_1k: i64,
    pub output_per_1k: i64,
}

/// The credits `usage` costs at `prices` (each side rounded up).
pub fn cost(prices: Prices, usage: Usage) -> i64 {
    price(prices.input_per_1k, usage.input_tokens)
        .saturating_add(price(prices.output_per_1k, usage.output_tokens))
}

/// A deliberately high token estimate for `chars` characters of model input (instructions,
/// history, the new messages): about 3 characters a token, where English averages 4 and
/// Spanish or Portuguese about 3.5, so the hold errs on the side of covering the turn.
pub fn estimate_tokens(chars: usize) -> u64 {
    (chars as u64).div_ceil(3)
}

/// The hold for a turn: every call it may make (`calls`: 2 when an empty answer is asked
/// again) reads the input again and may use its whole output budget, the second one twice the
/// first (capped at `output_cap`).
pub fn hold_for(
    prices: Prices,
    input_tokens: u64,
    max_output_tokens: u32,
    output_cap: u32,
    calls: u32,
) -> i64 {
    let mut budget = max_output_tokens.max(16);
    let mut output = 0u64;
    for _ in 0..calls.max(1) {
        output += u64::from(budget);
        budget = budget.saturating_mul(2).min(output_cap.max(budget));
    }
    cost(
        prices,
        Usage {
            input_tokens: input_tokens.saturating_mul(u64::from(calls.max(1))),
            output_tokens: output,
            cached_tokens: 0,
        },
    )
    .max(1)
}

/// Whether a new hold fits: the balance less every open hold must cover it, and the agent's
/// minimum balance must remain after it.
pub fn admits(balance: i64, held: i64, hold: i64, min_balance: i64) -> bool {
    let free = balance.saturating_sub(held.max(0));
    free >= hold.max(1) && free.saturating_sub(hold) >= min_balance.max(0)
}

/// What the record step writes for a settled turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settlement {
    /// Taken from the balance (ledger row `reply`).
    pub charge: i64,
    /// Cost the balance could not cover (the hold underestimated the input): counted and
    /// logged, never taken below zero.
    pub uncovered: i64,
}

/// Settles a turn's `cost` against the `balance` at record time (which still includes this
/// turn's hold: the hold is released in the same statement).
pub fn settle(cost: i64, balance: i64) -> Settlement {
    let cost = cost.max(0);
    let charge = cost.min(balance.max(0));
    Settlement {
        charge,
        uncovered: cost - charge,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn price_rounds_up_per_thousand_tokens() {
        assert_eq!(price(2, 1000), 2);
        assert_eq!(price(2, 1001), 3);
        assert_eq!(price(0, 5000), 0);
        assert_eq!(price(4, 1), 1);
    }

    const P: Prices = Prices {
        input_per_1k: 2,
        output_per_1k: 8,
    };

    #[test]
    fn cost_rounds_each_side_up() {
        let u = |i, o| Usage {
            input_tokens: i,
            output_tokens: o,
            cached_tokens: 0,
        };
        assert_eq!(cost(P, u(0, 0)), 0);
        assert_eq!(cost(P, u(1, 1)), 2);
        assert_eq!(cost(P, u(1000, 1000)), 10);
        assert_eq!(cost(P, u(1500, 250)), 5);
        assert_eq!(cost(Prices::default(), u(10_000, 10_000)), 0);
        // Absurd counts saturate instead of wrapping into a refund.
        assert!(cost(P, u(u64::MAX, u64::MAX)) > 0);
    }

    #[test]
    fn the_hold_covers_every_call_the_turn_may_make() {
        // One call: 1,000 input + 800 output.
        assert_eq!(hold_for(P, 1000, 800, 4096, 1), 2 + 7);
        // Two calls: the input twice, 800 + 1,600 output.
        assert_eq!(hold_for(P, 1000, 800, 4096, 2), 4 + 20);
        // The cap bounds the second budget.
        assert_eq!(hold_for(P, 0, 3000, 4096, 2), price(8, 7096));
        // Free models still hold a credit, so a zero balance is refused.
        assert_eq!(hold_for(Prices::default(), 1000, 800, 4096, 2), 1);
        // Whatever the model bills within its budgets, the hold covers it.
        for input in [0u64, 10, 999, 5000] {
            for out in [0u64, 1, 800, 2400] {
                let c = cost(
                    P,
                    Usage {
                        input_tokens: input * 2,
                        output_tokens: out,
                        cached_tokens: 0,
                    },
                );
                assert!(c <= hold_for(P, input, 800, 4096, 2), "{input} {out}");
            }
        }
        assert!(estimate_tokens(3000) >= 3000 / 4);
        assert_eq!(estimate_tokens(0), 0);
        assert_eq!(estimate_tokens(4), 2);
    }

    #[test]
    fn concurrent_turns_near_zero_cannot_all_pass_the_gate() {
        let hold = 9;
        // Balance 20: two holds fit, the third sees them.
        let mut held = 0;
        let mut admitted = 0;
        for _ in 0..5 {
            if admits(20, held, hold, 0) {
                held += hold;
                admitted += 1;
            }
        }
        assert_eq!(admitted, 2);
        assert!(!admits(0, 0, 1, 0));
        assert!(admits(1, 0, 1, 0));
        // The agent's minimum balance stays untouched.
        assert!(!admits(20, 0, 9, 12));
        assert!(admits(21, 0, 9, 12));
        // Nonsense inputs are not a way in.
        assert!(!admits(5, -100, 9, 0));
        // A negative hold counts as one credit.
        assert_eq!(admits(5, 0, -3, 0), admits(5, 0, 1, 0));
        assert!(!admits(0, 0, -3, 0));
    }

    #[test]
    fn settlement_never_goes_below_zero_and_says_what_it_could_not_take() {
        assert_eq!(
            settle(7, 100),
            Settlement {
                charge: 7,
                uncovered: 0
            }
        );
        assert_eq!(
            settle(7, 5),
            Settlement {
                charge: 5,
                uncovered: 2
            }
        );
        assert_eq!(
            settle(7, -3),
            Settlement {
                charge: 0,
                uncovered: 7
            }
        );
        assert_eq!(
            settle(-1, 10),
            Settlement {
                charge: 0,
                uncovered: 0
            }
        );
    }
}
