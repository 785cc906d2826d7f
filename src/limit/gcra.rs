//! The rate-limit maths, pure: GCRA (the generic cell rate algorithm, ITU-T I.371), which is a
//! token bucket kept as one number per bucket, its *theoretical arrival time* (TAT). Time is in
//! nanoseconds on the limiter's clock; a bucket whose TAT is at or before `now` is full, so a
//! bucket nobody has seen (TAT 0) is full and a full bucket can be forgotten.
//!
//! `decide` takes "now", the policies' parameters and their buckets, and says admit (taking one
//! token from every bucket) or refuse (taking none), with what the `RateLimit` header shows. The
//! local limiter calls it under the buckets' locks; the fleet-wide limiter (a store script on
//! the store's clock) does the same arithmetic, so both answer alike.
//!
//! Integers only, so the properties hold exactly: a request at `now + wait` passes (Retry-After
//! is exact), a refusal changes nothing, and over any window of length `d` at most
//! `burst + d / t` requests pass, with `t` rounded up so the rate never exceeds
//! `requests / per`.

/// Nanoseconds in a second.
pub const NS: u64 = 1_000_000_000;

/// One policy's parameters in GCRA form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// Emission interval: nanoseconds per token (`per / requests`, rounded up).
    pub t: u64,
    /// Bucket depth in time: `burst × t`.
    pub tau: u64,
}

impl Gcra {
    /// `requests` per `per_s` seconds, `burst` at once. Config validation keeps
    /// `burst × per / requests` far below `u64::MAX` nanoseconds (`MAX_REFILL`).
    pub fn new(requests: u64, per_s: u64, burst: u64) -> Gcra {
        let per_ns = u128::from(per_s) * u128::from(NS);
        let t = per_ns.div_ceil(u128::from(requests.max(1)));
        let tau = t * u128::from(burst.max(1));
        Gcra {
            t: u64::try_from(t).unwrap_or(u64::MAX / 4),
            tau: u64::try_from(tau).unwrap_or(u64::MAX / 4).min(u64::MAX / 4),
        }
    }

    /// Whole tokens left in a bucket at `now`.
    pub fn tokens(&self, tat: u64, now: u64) -> u64 {
        self.tau.saturating_sub(tat.saturating_sub(now)) / self.t
    }

    /// Nanoseconds until one request passes (0: it passes now).
    pub fn wait(&self, tat: u64, now: u64) -> u64 {
        (tat.saturating_sub(now) + self.t).saturating_sub(self.tau)
    }

    /// The bucket after one request at `now` took a token (the caller checked `wait` is 0).
    fn take(&self, tat: u64, now: u64) -> u64 {
        tat.max(now) + self.t
    }

    /// A bucket written under `old`, read with these parameters (a reload that changed a kept
    /// policy): the tokens it holds are kept, capped at the new burst, and refill at the new rate
    /// from now on. 0 means full (the bucket can be forgotten).
    pub fn convert(&self, old: &Gcra, tat: u64, now: u64) -> u64 {
        let debt = tat.saturating_sub(now);
        if debt == 0 {
            return 0;
        }
        // The level, in units of old.t: old.tau - debt; the same level in units of self.t.
        let level =
            u128::from(old.tau.saturating_sub(debt)) * u128::from(self.t) / u128::from(old.t);
        let new_debt = u128::from(self.tau).saturating_sub(level);
        if new_debt == 0 {
            0
        } else {
            now + new_debt as u64
        }
    }
}

/// Whole seconds, rounded up.
pub fn ceil_s(ns: u64) -> u64 {
    ns.div_ceil(NS)
}

/// What the `RateLimit` header shows: one policy (its index in the service's list), its tokens
/// left and the seconds until one more request passes (0 while `remaining ≥ 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shown {
    pub policy: usize,
    pub remaining: u64,
    pub reset: u64,
}

/// The outcome for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Every bucket gave a token. `None`: no policy is shown (only `by = "service"` ones).
    Admit(Option<Shown>),
    /// Some bucket is empty; nothing was taken. `shown` is the refusing policy with the longest
    /// wait, and `retry_after` that wait in whole seconds, rounded up.
    Refuse { shown: Shown, retry_after: u64 },
}

/// Decides one request against all of a service's policies, all or nothing. `tats[i]` is the
/// bucket of policy `i` (0 for one never seen); on admit each is replaced by its new value,
/// on refusal none changes. `shown_on_admit(i)`: policy `i` may be shown on an admitted request
/// (`by = "service"` policies are not: their counts describe everyone's traffic).
///
/// Shown on a refusal: the refusing policy with the longest wait (ties: config order). On an
/// admit: the policy with the fewest tokens left (ties: the longest reset, then config order).
pub fn decide(
    now: u64,
    gcras: &[Gcra],
    tats: &mut [u64],
    shown_on_admit: impl Fn(usize) -> bool,
) -> Decision {
    let mut refusing: Option<(usize, u64)> = None;
    for (i, (g, &tat)) in gcras.iter().zip(tats.iter()).enumerate() {
        let w = g.wait(tat, now);
        if w > 0 && refusing.is_none_or(|(_, longest)| w > longest) {
            refusing = Some((i, w));
        }
    }
    if let Some((i, w)) = refusing {
        let shown = Shown {
            policy: i,
            remaining: gcras[i].tokens(tats[i], now),
            reset: ceil_s(w),
        };
        return Decision::Refuse {
            shown,
            retry_after: ceil_s(w),
        };
    }
    let mut shown: Option<Shown> = None;
    for (i, (g, tat)) in gcras.iter().zip(tats.iter_mut()).enumerate() {
        *tat = g.take(*tat, now);
        if !shown_on_admit(i) {
            continue;
        }
        let remaining = g.tokens(*tat, now);
        let reset = if remaining >= 1 {
            0
        } else {
            ceil_s(g.wait(*tat, now))
        };
        let better = match shown {
            None => true,
            Some(s) => remaining < s.remaining || (remaining == s.remaining && reset > s.reset),
        };
        if better {
            shown = Some(Shown {
                policy: i,
                remaining,
                reset,
            });
        }
    }
    Decision::Admit(shown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: u64 = NS;

    fn one(g: Gcra, tat: &mut u64, now: u64) -> Decision {
        let mut t = [*tat];
        let d = decide(now, &[g], &mut t, |_| true);
        *tat = t[0];
        d
    }

    fn admits(g: Gcra, tat: &mut u64, now: u64) -> bool {
        matches!(one(g, tat, now), Decision::Admit(_))
    }

    #[test]
    fn a_burst_then_a_refusal_with_the_exact_wait() {
        // 1 per second, burst 2.
        let g = Gcra::new(1, 1, 2);
        let mut tat = 0;
        let now = 100 * S;
        assert_eq!(
            one(g, &mut tat, now),
            Decision::Admit(Some(Shown {
                policy: 0,
                remaining: 1,
                reset: 0
            }))
        );
        assert_eq!(
            one(g, &mut tat, now),
            Decision::Admit(Some(Shown {
                policy: 0,
                remaining: 0,
                reset: 1
            }))
        );
        let before = tat;
        assert_eq!(
            one(g, &mut tat, now + S / 4),
            Decision::Refuse {
                shown: Shown {
                    policy: 0,
                    remaining: 0,
                    reset: 1
                },
                retry_after: 1
            }
        );
        assert_eq!(tat, before, "a refusal takes nothing");
        assert!(matches!(one(g, &mut tat, now + S), Decision::Admit(_)));
    }

    #[test]
    fn all_or_nothing_and_which_policy_is_shown() {
        // 0: by client, burst 2; 1: by service, burst 3 (not shown on admit).
        let gs = [Gcra::new(2, 60, 2), Gcra::new(3, 60, 3)];
        let now = 10 * S;
        let mut tats = [0, 0];
        let d = decide(now, &gs, &mut tats, |i| i == 0);
        assert_eq!(
            d,
            Decision::Admit(Some(Shown {
                policy: 0,
                remaining: 1,
                reset: 0
            }))
        );
        decide(now, &gs, &mut tats, |i| i == 0);
        let before = tats;
        let d = decide(now, &gs, &mut tats, |i| i == 0);
        assert!(matches!(d, Decision::Refuse { shown, retry_after: 30 } if shown.policy == 0));
        assert_eq!(tats, before, "the service bucket kept its token");
        // Another client: its own bucket is full, the service bucket has one token left.
        let mut other = [0, tats[1]];
        assert!(matches!(
            decide(now, &gs, &mut other, |i| i == 0),
            Decision::Admit(_)
        ));
        let d = decide(now, &gs, &mut [0, other[1]], |i| i == 0);
        assert!(matches!(d, Decision::Refuse { shown, retry_after: 20 } if shown.policy == 1));
    }

    #[test]
    fn with_no_shown_policy_an_admit_shows_nothing() {
        let mut tats = [0];
        assert_eq!(
            decide(S, &[Gcra::new(5, 1, 5)], &mut tats, |_| false),
            Decision::Admit(None)
        );
    }

    #[test]
    fn ties_go_to_the_longest_reset_then_config_order() {
        // Both end with 0 tokens; the second waits longer (slower refill).
        let gs = [Gcra::new(10, 10, 1), Gcra::new(1, 10, 1)];
        let d = decide(S, &gs, &mut [0, 0], |_| true);
        assert_eq!(
            d,
            Decision::Admit(Some(Shown {
                policy: 1,
                remaining: 0,
                reset: 10
            }))
        );
        let gs = [Gcra::new(1, 10, 1), Gcra::new(1, 10, 1)];
        let d = decide(S, &gs, &mut [0, 0], |_| true);
        assert!(matches!(d, Decision::Admit(Some(s)) if s.policy == 0));
    }

    #[test]
    fn a_reload_keeps_the_level_capped_at_the_new_burst() {
        let old = Gcra::new(10, 10, 10);
        let now = 1000 * S;
        // 4 tokens spent: 6 left.
        let tat = now + 4 * old.t;
        assert_eq!(old.tokens(tat, now), 6);
        // A bigger burst and rate: still 6 tokens.
        let bigger = Gcra::new(100, 10, 100);
        assert_eq!(bigger.tokens(bigger.convert(&old, tat, now), now), 6);
        // A smaller burst: capped at 3, which is full.
        let smaller = Gcra::new(3, 10, 3);
        assert_eq!(smaller.convert(&old, tat, now), 0);
        // Full stays full.
        assert_eq!(bigger.convert(&old, now - 1, now), 0);
    }

    proptest! {
        /// Over any window, at most `burst + d / t` requests pass, and `t` never makes the rate
        /// higher than `requests / per`.
        #[test]
        fn never_more_than_burst_plus_rate(
            requests in 1u64..50, per in 1u64..5, burst in 1u64..20,
            gaps in proptest::collection::vec(0u64..(2 * NS), 1..300),
        ) {
            let g = Gcra::new(requests, per, burst);
            prop_assert!(u128::from(g.t) * u128::from(requests) >= u128::from(per) * u128::from(NS));
            let mut tat = 0;
            let mut now = NS;
            let mut admitted = Vec::new();
            for gap in gaps {
                now += gap;
                if let Decision::Admit(_) = one(g, &mut tat, now) {
                    admitted.push(now);
                }
            }
            for (i, &start) in admitted.iter().enumerate() {
                for (j, &end) in admitted.iter().enumerate().skip(i) {
                    let n = (j - i + 1) as u64;
                    prop_assert!(n <= burst + (end - start) / g.t, "{n} in {}ns", end - start);
                }
            }
        }

        /// A refused request changes nothing, and a request exactly `wait` later (or
        /// Retry-After seconds later) passes.
        #[test]
        fn refusals_change_nothing_and_retry_after_is_exact(
            requests in 1u64..50, per in 1u64..100, burst in 1u64..20,
            spent in 0u64..40, dt in 0u64..NS,
        ) {
            let g = Gcra::new(requests, per, burst);
            let now = 1_000 * NS;
            let mut tat = 0;
            for _ in 0..spent {
                one(g, &mut tat, now);
            }
            let later = now + dt;
            let before = tat;
            match one(g, &mut tat, later) {
                Decision::Refuse { retry_after, shown } => {
                    prop_assert_eq!(tat, before);
                    prop_assert_eq!(shown.remaining, 0);
                    let w = g.wait(tat, later);
                    prop_assert!(w > 0);
                    prop_assert!(admits(g, &mut tat.clone(), later + w));
                    prop_assert!(!admits(g, &mut tat.clone(), later + w - 1));
                    prop_assert!(admits(g, &mut tat, later + retry_after * NS));
                }
                Decision::Admit(Some(s)) => {
                    prop_assert_eq!(s.reset == 0, s.remaining >= 1);
                    // `remaining` more requests pass right now, and not one more.
                    for _ in 0..s.remaining {
                        prop_assert!(admits(g, &mut tat, later));
                    }
                    prop_assert!(!admits(g, &mut tat, later));
                }
                Decision::Admit(None) => prop_assert!(false, "one shown policy"),
            }
        }

        /// After a reload a kept bucket never holds more than the new burst, nor more tokens
        /// than it held before (a full one is full at the new burst).
        #[test]
        fn a_converted_bucket_keeps_its_level_capped(
            r1 in 1u64..100, p1 in 1u64..100, b1 in 1u64..100,
            r2 in 1u64..100, p2 in 1u64..100, b2 in 1u64..100,
            spent in 0u64..100,
        ) {
            let (old, new) = (Gcra::new(r1, p1, b1), Gcra::new(r2, p2, b2));
            let now = 1_000_000 * NS;
            let mut tat = 0;
            for _ in 0..spent {
                one(old, &mut tat, now);
            }
            let converted = new.convert(&old, tat, now);
            let before = old.tokens(tat, now);
            let after = new.tokens(converted, now);
            prop_assert!(after <= b2);
            if tat <= now {
                // A full bucket is no bucket: full at any burst.
                prop_assert_eq!(converted, 0);
            } else {
                prop_assert!(after <= before.min(b2));
                prop_assert!(after + 1 >= before.min(b2), "{after} vs {before}");
            }
        }
    }
}
