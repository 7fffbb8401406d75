//! How many requests that may have reached Livy are sent again.
//!
//! A GET that failed after it was sent (Livy closed the connection without
//! an answer, or sent a broken one) is worth one more try: the server may
//! have died and a new leader will answer. Retried without limit, the same
//! failure becomes a storm: a handler that crashes Livy runs again and
//! again, and a Livy failing under load gets several times its load. So
//! each request retries at most once per server ([`super::HttpProxy`]'s
//! loop), and across requests retries are capped at a share of requests:
//! a budget, as linkerd and Envoy do. Waiting for a leader (a request held
//! during an election, or a refused connect: nothing was sent) is not a
//! retry and draws nothing.
//!
//! The budget is tower's `TpsBudget` (its `retry` middleware's, used here
//! without the middleware: the proxy's own loop decides what to retry).

use std::time::Duration;

use tower::retry::budget::{Budget, TpsBudget};

/// Share of idempotent requests that may be retried, on top of
/// [`MIN_RETRIES_PER_SECOND`] (linkerd's default ratio).
pub const RETRY_RATIO: f32 = 0.2;
/// Retries always allowed per second, so that a quiet proxy can retry at all.
pub const MIN_RETRIES_PER_SECOND: u32 = 10;
/// How long a request's deposit counts toward the budget.
pub const BUDGET_WINDOW: Duration = Duration::from_secs(10);

/// The proxy-wide retry budget: every idempotent request deposits, every
/// retry withdraws.
#[derive(Debug)]
pub struct RetryBudget(TpsBudget);

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget(TpsBudget::new(
            BUDGET_WINDOW,
            MIN_RETRIES_PER_SECOND,
            RETRY_RATIO,
        ))
    }
}

impl RetryBudget {
    /// A request that could be retried arrived.
    pub fn deposit(&self) {
        self.0.deposit();
    }

    /// Whether one more retry is allowed now (and counts it).
    pub fn withdraw(&self) -> bool {
        self.0.withdraw()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_capped_at_a_share_of_requests_beyond_the_minimum() {
        let budget = RetryBudget::default();
        for _ in 0..100 {
            budget.deposit();
        }
        let allowed = (0..1000).take_while(|_| budget.withdraw()).count();
        // 10 s of 10/s reserve plus 20% of 100 requests, not all 1000.
        let most = (BUDGET_WINDOW.as_secs() as usize) * MIN_RETRIES_PER_SECOND as usize + 20;
        assert!(
            allowed >= 20 && allowed <= most + 1,
            "{allowed} retries allowed"
        );
    }
}
