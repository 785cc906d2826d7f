//! A service's deployments as the hot path sees them (contract §8): each deployment's backends
//! and forward settings, and the live split and mirror in force as a table built once per
//! snapshot, so that a request's draw is one random number and a scan of a few bytes — no
//! lock, no allocation.

use http::HeaderValue;

use crate::config::Traffic;
use crate::proxy::ForwardSettings;
use crate::proxy::upstream::{Upstream, random};

/// One deployment of a service.
pub struct Deployment {
    pub name: String,
    /// The name as the `azureml-model-deployment` header value.
    pub header: HeaderValue,
    /// Shared with the service's mirror when this deployment is the mirror.
    pub upstream: std::sync::Arc<Upstream>,
    pub forward: ForwardSettings,
    /// Whether `azureml-model-deployment` may name it.
    pub pinnable: bool,
}

impl Deployment {
    /// `Succeeded`, `Degraded` (some backends down) or `Unhealthy` (none available).
    pub fn state(&self) -> &'static str {
        self.upstream.state()
    }
}

/// The split and mirror in force, and the draw's table.
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    /// Every deployment with its live weight.
    pub traffic: Traffic,
    /// The mirror deployment and its share, if any.
    pub mirror_traffic: Traffic,
    /// Running sums of the live weights in deployment order (the last is 100, or 0 when no
    /// deployment takes live traffic).
    cumulative: Box<[u8]>,
    /// The mirror: (deployment index, percent of unpinned live requests).
    pub mirror: Option<(usize, u8)>,
}

impl Routing {
    /// The table for deployments `names` (in the service's order) and a checked split and mirror.
    pub fn new(names: &[&str], traffic: &Traffic, mirror_traffic: &Traffic) -> Routing {
        let mut sum = 0u8;
        let cumulative = names
            .iter()
            .map(|n| {
                sum = sum.saturating_add(traffic.get(*n).copied().unwrap_or(0));
                sum
            })
            .collect();
        let mirror = mirror_traffic
            .iter()
            .find(|(_, p)| **p > 0)
            .and_then(|(n, p)| names.iter().position(|x| x == n).map(|i| (i, *p)));
        Routing {
            traffic: traffic.clone(),
            mirror_traffic: mirror_traffic.clone(),
            cumulative,
            mirror,
        }
    }

    /// Whether some deployment takes live traffic.
    pub fn has_live_traffic(&self) -> bool {
        self.cumulative.last().is_some_and(|t| *t > 0)
    }

    /// A deployment drawn by weight (`None`: every weight is 0).
    pub fn draw(&self) -> Option<usize> {
        self.pick((random() % 100) as u8)
    }

    /// The deployment for a roll `r` in `0..100`.
    fn pick(&self, r: u8) -> Option<usize> {
        let total = *self.cumulative.last()?;
        if total == 0 {
            return None;
        }
        self.cumulative.iter().position(|c| r < *c)
    }

    /// Whether this request is mirrored (`Some(index)` of the mirror deployment).
    pub fn mirror_draw(&self) -> Option<usize> {
        let (i, p) = self.mirror?;
        ((random() % 100) < u64::from(p)).then_some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(pairs: &[(&str, u8)]) -> Traffic {
        pairs.iter().map(|(n, w)| (n.to_string(), *w)).collect()
    }

    #[test]
    fn each_roll_lands_on_the_deployment_whose_weight_covers_it() {
        let r = Routing::new(
            &["blue", "green", "red"],
            &t(&[("blue", 90), ("green", 0), ("red", 10)]),
            &t(&[]),
        );
        let picks: Vec<_> = (0..100).map(|x| r.pick(x).unwrap()).collect();
        assert_eq!(picks.iter().filter(|i| **i == 0).count(), 90);
        assert_eq!(picks.iter().filter(|i| **i == 1).count(), 0);
        assert_eq!(picks.iter().filter(|i| **i == 2).count(), 10);
        assert!(r.has_live_traffic());
        assert_eq!(r.mirror, None);
    }

    #[test]
    fn no_weight_means_no_draw_and_the_mirror_is_found_by_name() {
        let r = Routing::new(
            &["blue", "green"],
            &t(&[("blue", 0), ("green", 0)]),
            &t(&[("green", 30)]),
        );
        assert!(!r.has_live_traffic());
        assert_eq!(r.draw(), None);
        assert_eq!(r.mirror, Some((1, 30)));
        let hits = (0..10_000).filter(|_| r.mirror_draw().is_some()).count();
        assert!((2500..3500).contains(&hits), "{hits}");
    }
}
