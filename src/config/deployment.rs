//! `[[service.deployment]]`, `traffic`, `mirror_traffic` and the `mirror_*` keys (contract §8):
//! their checks, each problem naming its key, and `check_traffic`, the rules of a split and a
//! mirror that the admin API's `PUT .../traffic` applies too.

use std::collections::BTreeMap;
use std::fmt;

use super::defaults::*;
use super::raw::RawDeployment;
use super::types::*;
use super::validate::Validator;
use crate::route::valid_service_name;

/// The service keys of contract §8, handed over from the service's raw struct.
pub(super) struct RawShape {
    pub deployments: Vec<RawDeployment>,
    pub traffic: Option<BTreeMap<String, toml::Value>>,
    pub mirror_traffic: Option<BTreeMap<String, toml::Value>>,
    pub mirror_max_body: Option<String>,
    pub mirror_tolerance: Option<f64>,
    pub mirror_max_in_flight: Option<usize>,
    pub mirror_queue: Option<usize>,
    pub mirror_headers: Option<Vec<String>>,
}

/// The most of live traffic a mirror may copy (Azure's limit).
pub const MAX_MIRROR_PERCENT: u8 = 50;

/// Request headers that never reach a mirror, whatever `mirror_headers` says: the credential
/// and cookies (contract §8), and the headers the gateway itself sets on a copy.
const NEVER_MIRRORED: [&str; 6] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-scoregate-mirror",
    "azureml-model-deployment",
];

/// A broken rule of a traffic split or mirror (config error, or 400 `InvalidTraffic`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrafficError {
    /// `traffic` or `mirrorTraffic` names no deployment of the service.
    UnknownDeployment { mirror: bool, name: String },
    /// A weight that is not a whole number from 0 to 100.
    BadValue { mirror: bool, name: String },
    /// The live weights sum to neither 100 nor 0.
    Sum(u32),
    /// More than one deployment with a mirror share.
    MoreThanOneMirror,
    /// A mirror share over 50.
    MirrorOver50 { name: String, share: u32 },
    /// The mirror deployment also takes live traffic.
    MirrorHasLiveWeight { name: String, weight: u8 },
}

impl fmt::Display for TrafficError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrafficError::UnknownDeployment { mirror, name } => write!(
                f,
                "{} names {name:?}, which is not a deployment of this service",
                if *mirror {
                    "the mirror"
                } else {
                    "the traffic split"
                }
            ),
            TrafficError::BadValue { mirror, name } => write!(
                f,
                "the {} of {name:?} must be a whole number from 0 to {}",
                if *mirror { "mirror share" } else { "weight" },
                if *mirror { MAX_MIRROR_PERCENT } else { 100 }
            ),
            TrafficError::Sum(s) => write!(
                f,
                "the live weights sum to {s}; they must sum to 100, or all be 0 (no live traffic)"
            ),
            TrafficError::MoreThanOneMirror => {
                write!(f, "at most one deployment may receive mirrored traffic")
            }
            TrafficError::MirrorOver50 { name, share } => write!(
                f,
                "the mirror share of {name:?} is {share}; at most {MAX_MIRROR_PERCENT} percent of live traffic may be mirrored"
            ),
            TrafficError::MirrorHasLiveWeight { name, weight } => write!(
                f,
                "{name:?} takes {weight} percent of live traffic; a deployment is live or mirror, never both (set its weight to 0 first)"
            ),
        }
    }
}

/// The rules of contract §8 for a live split and a mirror over the deployments `names`:
/// known names, live weights summing to 100 or all 0, at most one mirror of at most 50 percent
/// and with live weight 0. Zero mirror shares are allowed (and mean no mirror).
pub fn check_traffic(
    names: &[&str],
    traffic: &BTreeMap<String, u32>,
    mirror: &BTreeMap<String, u32>,
) -> Result<(), TrafficError> {
    for (mirror_side, map) in [(false, traffic), (true, mirror)] {
        for name in map.keys() {
            if !names.contains(&name.as_str()) {
                return Err(TrafficError::UnknownDeployment {
                    mirror: mirror_side,
                    name: name.clone(),
                });
            }
        }
    }
    for (name, w) in traffic {
        if *w > 100 {
            return Err(TrafficError::BadValue {
                mirror: false,
                name: name.clone(),
            });
        }
    }
    let sum: u32 = traffic.values().sum();
    if sum != 0 && sum != 100 {
        return Err(TrafficError::Sum(sum));
    }
    let shares: Vec<(&String, &u32)> = mirror.iter().filter(|(_, s)| **s > 0).collect();
    if shares.len() > 1 {
        return Err(TrafficError::MoreThanOneMirror);
    }
    if let Some((name, share)) = shares.first() {
        if **share > u32::from(MAX_MIRROR_PERCENT) {
            return Err(TrafficError::MirrorOver50 {
                name: (*name).clone(),
                share: **share,
            });
        }
        let weight = traffic.get(*name).copied().unwrap_or(0);
        if weight > 0 {
            return Err(TrafficError::MirrorHasLiveWeight {
                name: (*name).clone(),
                weight: weight as u8,
            });
        }
    }
    Ok(())
}

/// A checked split over `names`: every deployment listed (those not named at 0).
pub fn full_traffic(names: &[&str], given: &BTreeMap<String, u32>) -> Traffic {
    names
        .iter()
        .map(|n| ((*n).to_string(), given.get(*n).copied().unwrap_or(0) as u8))
        .collect()
}

/// A checked mirror: only the non-zero share, if any.
pub fn mirror_only(given: &BTreeMap<String, u32>) -> Traffic {
    given
        .iter()
        .filter(|(_, s)| **s > 0)
        .map(|(n, s)| (n.clone(), *s as u8))
        .collect()
}

/// The split and mirror in force for `svc`: the ones stored through the admin API where set
/// (`None`: the config's), checked against the configured deployments. A stored weight for a
/// deployment that no longer exists is dropped when it is 0; any other misfit is an error.
pub fn effective(
    svc: &ServiceConfig,
    stored_traffic: Option<&Traffic>,
    stored_mirror: Option<&Traffic>,
) -> Result<(Traffic, Traffic), TrafficError> {
    let names = svc.deployment_names();
    let widen = |t: &Traffic| -> BTreeMap<String, u32> {
        t.iter()
            .filter(|(n, w)| **w > 0 || names.contains(&n.as_str()))
            .map(|(n, w)| (n.clone(), u32::from(*w)))
            .collect()
    };
    let t = widen(stored_traffic.unwrap_or(&svc.traffic));
    let m = widen(stored_mirror.unwrap_or(&svc.mirror_traffic));
    check_traffic(&names, &t, &m)?;
    Ok((full_traffic(&names, &t), mirror_only(&m)))
}

impl Validator {
    /// Fills in the deployments, the split, the mirror and its settings of `svc`, reporting
    /// every broken rule under its key.
    pub(super) fn deployments(&mut self, key: &str, svc: &mut ServiceConfig, raw: RawShape) {
        let mut deployments: Vec<DeploymentConfig> = Vec::with_capacity(raw.deployments.len());
        for (j, d) in raw.deployments.into_iter().enumerate() {
            let dkey = format!("{key}.deployment[{j}]");
            if let Some(dep) = self.deployment(&dkey, d, svc) {
                if deployments.iter().any(|o| o.name == dep.name) {
                    self.problem(
                        &format!("{dkey}.name"),
                        format!("{:?} is defined twice in this service", dep.name),
                    );
                }
                for (k, b) in dep.backends.iter().enumerate() {
                    if let Some(o) = deployments.iter().find(|o| o.backends.contains(b)) {
                        self.problem(
                            &format!("{dkey}.backends[{k}]"),
                            format!(
                                "{b} is already a backend of deployment {:?}: a backend URL may appear in only one deployment of a service",
                                o.name
                            ),
                        );
                    }
                }
                deployments.push(dep);
            }
        }
        svc.deployments = deployments;
        let names_owned: Vec<String> = svc
            .deployment_names()
            .into_iter()
            .map(str::to_string)
            .collect();
        let names: Vec<&str> = names_owned.iter().map(String::as_str).collect();

        let traffic = match raw.traffic {
            Some(t) => self.weights(&format!("{key}.traffic"), &names, t, false),
            None if names.len() > 1 => {
                self.problem(
                    &format!("{key}.traffic"),
                    format!(
                        "a service with several deployments needs traffic = {{ {} }} (whole percentages summing to 100, or all 0)",
                        names
                            .iter()
                            .enumerate()
                            .map(|(i, n)| format!("{n} = {}", if i == 0 { 100 } else { 0 }))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
                Some(BTreeMap::new())
            }
            None => Some(names.iter().map(|n| ((*n).to_string(), 100)).collect()),
        };
        let mirror = match raw.mirror_traffic {
            Some(m) => self.weights(&format!("{key}.mirror_traffic"), &names, m, true),
            None => Some(BTreeMap::new()),
        };
        if let (Some(t), Some(m)) = (&traffic, &mirror) {
            match check_traffic(&names, t, m) {
                Ok(()) => {
                    svc.traffic = full_traffic(&names, t);
                    svc.mirror_traffic = mirror_only(m);
                }
                Err(e) => {
                    let k = match &e {
                        TrafficError::Sum(_) => format!("{key}.traffic"),
                        TrafficError::MoreThanOneMirror => format!("{key}.mirror_traffic"),
                        TrafficError::MirrorOver50 { name, .. }
                        | TrafficError::MirrorHasLiveWeight { name, .. } => {
                            format!("{key}.mirror_traffic.{name}")
                        }
                        TrafficError::UnknownDeployment { mirror, name }
                        | TrafficError::BadValue { mirror, name } => format!(
                            "{key}.{}.{name}",
                            if *mirror { "mirror_traffic" } else { "traffic" }
                        ),
                    };
                    self.problem(&k, e);
                }
            }
        }

        let mirror_max_body = self.size(
            &format!("{key}.mirror_max_body"),
            raw.mirror_max_body.as_deref(),
            DEFAULT_MIRROR_MAX_BODY,
        );
        let tolerance = raw.mirror_tolerance.unwrap_or(DEFAULT_MIRROR_TOLERANCE);
        if !tolerance.is_finite() || !(0.0..1.0).contains(&tolerance) {
            self.problem(
                &format!("{key}.mirror_tolerance"),
                format!("{tolerance} must be a relative tolerance from 0 up to (not including) 1, e.g. 1e-6"),
            );
        }
        let max_in_flight = raw
            .mirror_max_in_flight
            .unwrap_or(DEFAULT_MIRROR_MAX_IN_FLIGHT);
        if max_in_flight == 0 {
            self.problem(
                &format!("{key}.mirror_max_in_flight"),
                "must be at least 1 (to stop mirroring, clear mirror_traffic)",
            );
        }
        let mut headers = Vec::new();
        for (i, h) in raw.mirror_headers.unwrap_or_default().iter().enumerate() {
            let lower = h.to_ascii_lowercase();
            if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
                self.problem(
                    &format!("{key}.mirror_headers[{i}]"),
                    format!("{h:?} is not a header name"),
                );
            } else if NEVER_MIRRORED.contains(&lower.as_str()) {
                self.problem(
                    &format!("{key}.mirror_headers[{i}]"),
                    format!("{h:?} is never copied to a mirror (credentials, cookies and the gateway's own headers stay behind)"),
                );
            } else if !headers.contains(&lower) {
                headers.push(lower);
            }
        }
        svc.mirror = MirrorConfig {
            max_body: mirror_max_body,
            tolerance,
            max_in_flight,
            queue: raw.mirror_queue.unwrap_or(DEFAULT_MIRROR_QUEUE),
            headers,
        };
    }

    /// A weight map under `key`: whole numbers from 0 to 100 (`None` when one is not).
    fn weights(
        &mut self,
        key: &str,
        names: &[&str],
        raw: BTreeMap<String, toml::Value>,
        mirror: bool,
    ) -> Option<BTreeMap<String, u32>> {
        let mut out = BTreeMap::new();
        let mut ok = true;
        for (name, v) in raw {
            match v.as_integer() {
                Some(w) if (0..=100).contains(&w) => {
                    out.insert(name, w as u32);
                }
                _ => {
                    ok = false;
                    let e = if names.contains(&name.as_str()) {
                        TrafficError::BadValue {
                            mirror,
                            name: name.clone(),
                        }
                    } else {
                        TrafficError::UnknownDeployment {
                            mirror,
                            name: name.clone(),
                        }
                    };
                    self.problem(&format!("{key}.{name}"), e);
                }
            }
        }
        ok.then_some(out)
    }

    /// One `[[service.deployment]]` entry (`None` when its name is unusable).
    fn deployment(
        &mut self,
        key: &str,
        d: RawDeployment,
        svc: &ServiceConfig,
    ) -> Option<DeploymentConfig> {
        let service_only = [
            ("max_body", d.max_body.is_some()),
            ("allow", d.allow.is_some()),
            ("deny", d.deny.is_some()),
            ("auth", d.auth.is_some()),
            ("primary_key", d.primary_key.is_some()),
            ("secondary_key", d.secondary_key.is_some()),
            ("trusted_issuers", d.trusted_issuers.is_some()),
            ("rate_limit", d.rate_limit.is_some()),
            ("traffic", d.traffic.is_some()),
            ("mirror_traffic", d.mirror_traffic.is_some()),
            ("mirror_max_body", d.mirror_max_body.is_some()),
            ("mirror_tolerance", d.mirror_tolerance.is_some()),
            ("mirror_max_in_flight", d.mirror_max_in_flight.is_some()),
            ("mirror_queue", d.mirror_queue.is_some()),
            ("mirror_headers", d.mirror_headers.is_some()),
        ];
        for (k, set) in service_only {
            if set {
                self.problem(
                    &format!("{key}.{k}"),
                    format!(
                        "{k} is a service key only: set it on the [[service]], not on a deployment"
                    ),
                );
            }
        }
        let named = valid_service_name(&d.name);
        if !named {
            self.problem(
                &format!("{key}.name"),
                format!(
                    "{:?} is not a valid deployment name (3 to 32 characters of a-z 0-9 -, starting with a letter, not ending with -)",
                    d.name
                ),
            );
        }
        if d.backends.is_empty() {
            self.problem(&format!("{key}.backends"), "needs at least one backend URL");
        }
        let backends = self.backend_list(&format!("{key}.backends"), &d.backends);
        let backend_protocol = self.backend_protocol(key, d.backend_protocol.as_deref());
        if let Some(p) = &d.score_path {
            self.score_path(key, p);
        }
        let scoring_timeout = d.scoring_timeout.as_deref().map(|s| {
            self.duration(
                &format!("{key}.scoring_timeout"),
                Some(s),
                svc.scoring_timeout,
            )
        });
        if scoring_timeout.is_some_and(|t| t.is_zero()) {
            self.problem(&format!("{key}.scoring_timeout"), "must be more than 0s");
        }
        let max_request_wait_time = d.max_request_wait_time.as_deref().map(|s| {
            self.duration(
                &format!("{key}.max_request_wait_time"),
                Some(s),
                svc.max_request_wait_time,
            )
        });
        let h = d.health.unwrap_or_default();
        let base = &svc.health;
        let health = HealthOverrides {
            path: h.path,
            period: h
                .period
                .as_deref()
                .map(|s| self.duration(&format!("{key}.health.period"), Some(s), base.period)),
            timeout: h
                .timeout
                .as_deref()
                .map(|s| self.duration(&format!("{key}.health.timeout"), Some(s), base.timeout)),
            failure_threshold: h.failure_threshold,
            success_threshold: h.success_threshold,
            initial_delay: h.initial_delay.as_deref().map(|s| {
                self.duration(
                    &format!("{key}.health.initial_delay"),
                    Some(s),
                    base.initial_delay,
                )
            }),
        };
        if health != HealthOverrides::default() {
            self.check_health(key, &health.over(base));
        }
        named.then(|| DeploymentConfig {
            name: d.name,
            backends,
            backend_protocol,
            score_path: d.score_path,
            scoring_timeout,
            max_concurrent_requests_per_backend: d.max_concurrent_requests_per_backend,
            max_request_wait_time,
            health,
            pinnable: d.pinnable.unwrap_or(true),
        })
    }
}
