use super::*;
use std::net::SocketAddr;
use std::time::Duration;

#[test]
fn backend_urls_with_user_info_are_refused() {
    let e = parse_backend("http://user:secret@10.0.0.5:5001").unwrap_err();
    assert!(e.contains("user info"), "{e}");
    assert!(parse_backend("http://10.0.0.5:5001").is_ok());
}

const MINIMAL: &str = r#"
[[tls.certificates]]
cname = "scoring.example.com"
cert = "certs/fullchain.pem"
key = "certs/key.pem"

[[service]]
name = "iris"
backends = ["http://127.0.0.1:5001"]
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/scoregate/scoregate.toml"))
}

fn problems(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn minimal_config_gets_documented_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(
        c.listen.addresses,
        vec!["0.0.0.0:8443".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(
        c.admin.address,
        "127.0.0.1:9090".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(
        c.tls.certificates[0].cert,
        Path::new("/etc/scoregate/certs/fullchain.pem")
    );
    assert_eq!(c.state_dir, Path::new("/etc/scoregate/../state"));
    let s = &c.services[0];
    assert_eq!(s.auth, AuthMode::Key);
    assert_eq!(s.score_path, "/score");
    assert_eq!(s.scoring_timeout, Duration::from_secs(60));
    assert_eq!(s.max_body, 100 * 1024 * 1024);
    assert_eq!(s.max_request_wait_time, Duration::from_millis(500));
}

#[test]
fn unknown_keys_are_errors_naming_the_key() {
    let e = problems(&format!("{MINIMAL}\n[limits]\nmax_conections = 5\n"));
    assert!(e.contains("max_conections"), "{e}");
    assert!(e.contains("/etc/scoregate/scoregate.toml"), "{e}");
    let e = problems(&MINIMAL.replace("name = \"iris\"", "name = \"iris\"\nbackend = \"x\""));
    assert!(
        e.contains("service[0].backend: unknown key") && e.contains("did you mean `backends`?"),
        "{e}"
    );
}

#[test]
fn bad_values_name_key_and_reason() {
    let cases = [
        ("name = \"iris\"", "name = \"Iris\"", "service[0].name"),
        ("name = \"iris\"", "name = \"ab\"", "service[0].name"),
        ("name = \"iris\"", "name = \"iris-\"", "service[0].name"),
        (
            "name = \"iris\"",
            "name = \"iris\"\nauth = \"both\"",
            "service[0].auth",
        ),
        (
            "name = \"iris\"",
            "name = \"iris\"\nscoring_timeout = \"soon\"",
            "service[0].scoring_timeout",
        ),
        (
            "name = \"iris\"",
            "name = \"iris\"\nmax_body = \"lots\"",
            "service[0].max_body",
        ),
        (
            "name = \"iris\"",
            "name = \"iris\"\nallow = [\"10.0.0.0/33\"]",
            "service[0].allow[0]",
        ),
        (
            "name = \"iris\"",
            "name = \"iris\"\nprimary_key = \"short\"",
            "service[0].primary_key",
        ),
        (
            "name = \"iris\"",
            "name = \"iris\"\nauth = \"token\"\nprimary_key = \"0123456789012345678901234567890123\"",
            "service[0].primary_key",
        ),
        (
            "\"http://127.0.0.1:5001\"",
            "\"ftp://x\"",
            "service[0].backends[0]",
        ),
        (
            "\"http://127.0.0.1:5001\"",
            "\"http://x:1/score\"",
            "service[0].backends[0]",
        ),
    ];
    for (from, to, key) in cases {
        let e = problems(&MINIMAL.replace(from, to));
        assert!(e.contains(key), "expected {key} in: {e}");
    }
}

/// Regression (issue 11): a path the HTTP path parser refuses passed validation and then made
/// every request to the service panic.
#[test]
fn paths_are_checked_with_the_parser_that_uses_them() {
    for bad in ["/score<v2>", "/a b", "/score?x=1", "score", "/a>b"] {
        let text = MINIMAL.replace(
            "name = \"iris\"",
            &format!("name = \"iris\"\nscore_path = \"{bad}\""),
        );
        assert!(problems(&text).contains("service[0].score_path"), "{bad}");
        let text = format!("{MINIMAL}\n[service.health]\npath = \"{bad}\"\n");
        assert!(problems(&text).contains("service[0].health.path"), "{bad}");
    }
    assert!(
        parse(&MINIMAL.replace(
            "name = \"iris\"",
            "name = \"iris\"\nscore_path = \"/v2/score-x_1.json\""
        ))
        .is_ok()
    );
}

#[test]
fn duplicate_services_and_missing_certs_are_errors() {
    let text = format!(
        "{MINIMAL}\n[[service]]\nname = \"iris\"\nbackends = [\"http://127.0.0.1:5002\"]\n"
    );
    assert!(problems(&text).contains("defined twice"));
    let no_certs = MINIMAL.replace("[[tls.certificates]]", "[tlsx]");
    assert!(parse(&no_certs).is_err());
}

#[test]
fn listen_takes_one_address_or_a_list() {
    let text = format!("[listen]\naddress = [\"127.0.0.1:1\", \"[::1]:2\"]\n{MINIMAL}");
    assert_eq!(parse(&text).unwrap().listen.addresses.len(), 2);
    let text = format!("[listen]\naddress = \"localhost:1\"\n{MINIMAL}");
    assert!(problems(&text).contains("listen.address[0]"));
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = MINIMAL.replace(
        "name = \"iris\"",
        "name = \"I\"\nscoring_timeout = \"x\"\nmax_body = \"y\"",
    );
    let e = parse(&text).unwrap_err();
    assert_eq!(e.problems.len(), 3, "{e}");
}

#[test]
fn the_example_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/scoregate.toml");
    Config::load(&path).unwrap();
}

/// Keys whose values are strings the validator checks, with where they live.
const STRING_KEYS: &[(&str, &str)] = &[
    ("listen", "public_url"),
    ("listen", "proxy_protocol"),
    ("admin", "address"),
    ("server", "drain_timeout"),
    ("limits", "header_read_timeout"),
    ("limits", "max_header_size"),
    ("limits", "idle_timeout"),
    ("limits", "tls_handshake_timeout"),
    ("log", "format"),
    ("tokens", "algorithm"),
    ("tokens", "lifetime"),
    ("tokens", "refresh_after"),
    ("tokens", "leeway"),
];

/// Keys of the `[[service]]` entry, likewise.
const SERVICE_KEYS: &[&str] = &[
    "auth",
    "backend_protocol",
    "score_path",
    "scoring_timeout",
    "max_body",
    "max_request_wait_time",
    "primary_key",
];

/// A problem line names its key first: `listen.address[0]: ...`, `service[0].max_body: ...`.
fn names_a_key(problem: &str) -> bool {
    let key = problem.split(": ").next().unwrap_or("");
    !key.is_empty()
        && key.split('.').all(|part| {
            let name = part.split('[').next().unwrap();
            !name.is_empty() && name.bytes().all(|c| c.is_ascii_lowercase() || c == b'_')
        })
}

proptest::proptest! {
    /// Any text at all: an answer, never a panic.
    #[test]
    fn any_text_parses_or_fails_cleanly(text in "\\PC{0,400}") {
        let _ = parse(&text);
    }

    /// Random string values for the checked keys: every problem reported names its key.
    #[test]
    fn every_problem_names_its_key(
        globals in proptest::collection::vec((0..STRING_KEYS.len(), "[ -~&&[^\"\\\\]]{0,12}"), 0..6),
        svc in proptest::collection::vec((0..SERVICE_KEYS.len(), "[ -~&&[^\"\\\\]]{0,12}"), 0..4),
    ) {
        let mut sections: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
        for (k, v) in &globals {
            let (section, key) = STRING_KEYS[*k];
            let lines = sections.entry(section).or_default();
            if !lines.iter().any(|l| l.starts_with(&format!("{key} ="))) {
                lines.push(format!("{key} = \"{v}\""));
            }
        }
        let mut text = String::new();
        for (section, lines) in &sections {
            text += &format!("[{section}]\n{}\n", lines.join("\n"));
        }
        let mut service_lines = vec![];
        for (k, v) in &svc {
            let key = SERVICE_KEYS[*k];
            if !service_lines.iter().any(|l: &String| l.starts_with(&format!("{key} ="))) {
                service_lines.push(format!("{key} = \"{v}\""));
            }
        }
        text += &MINIMAL.replace("name = \"iris\"", &format!("name = \"iris\"\n{}", service_lines.join("\n")));
        if let Err(e) = parse(&text) {
            for p in &e.problems {
                proptest::prop_assert!(names_a_key(p), "{p}\n--- in ---\n{text}");
            }
        }
    }
}

#[test]
fn rate_limits_get_their_defaults() {
    let c = parse(&format!(
        "{MINIMAL}\n[[service.rate_limit]]\nrequests = 100\nper = \"1m\"\nby = \"client\"\n\n[[service.rate_limit]]\nrequests = 5\nper = \"1s\"\nby = \"service\"\nburst = 20\nname = \"backend-guard\"\n"
    ))
    .unwrap();
    assert_eq!(
        c.services[0].rate_limits,
        vec![
            RateLimitConfig::new(
                "client",
                RateLimitBy::Client,
                100,
                Duration::from_secs(60),
                100
            ),
            RateLimitConfig::new(
                "backend-guard",
                RateLimitBy::Service,
                5,
                Duration::from_secs(1),
                20
            ),
        ]
    );
}

#[test]
fn every_rate_limit_problem_names_its_key() {
    let rl = |body: &str| format!("{MINIMAL}\n[[service.rate_limit]]\n{body}\n");
    let cases: &[(&str, &str)] = &[
        (
            "requests = 1\nper = \"500ms\"\nby = \"client\"",
            "service[0].rate_limit[0].per",
        ),
        (
            "requests = 1\nper = \"1500ms\"\nby = \"client\"",
            "service[0].rate_limit[0].per",
        ),
        (
            "requests = 1\nper = \"soon\"\nby = \"client\"",
            "service[0].rate_limit[0].per",
        ),
        (
            "requests = 1\nby = \"client\"",
            "service[0].rate_limit[0].per: required",
        ),
        (
            "requests = 0\nper = \"1s\"\nby = \"client\"",
            "service[0].rate_limit[0].requests",
        ),
        (
            "per = \"1s\"\nby = \"client\"",
            "service[0].rate_limit[0].requests: required",
        ),
        (
            "requests = 1\nper = \"1s\"\nby = \"client\"\nburst = 0",
            "service[0].rate_limit[0].burst",
        ),
        (
            "requests = 1\nper = \"1s\"\nby = \"key\"",
            "service[0].rate_limit[0].by",
        ),
        (
            "requests = 1\nper = \"1s\"",
            "service[0].rate_limit[0].by: required",
        ),
        (
            "requests = 1\nper = \"1s\"\nby = \"client\"\nname = \"a b\"",
            "service[0].rate_limit[0].name",
        ),
        (
            "requests = 1\nper = \"1s\"\nby = \"client\"\nper_client = 1",
            "per_client",
        ),
        (
            "requests = 1\nper = \"1s\"\nby = \"client\"\n\n[[service.rate_limit]]\nrequests = 2\nper = \"1s\"\nby = \"client\"",
            "service[0].rate_limit[1].name: \"client\" is already the name of rate_limit[0]",
        ),
    ];
    for (body, needle) in cases {
        let e = problems(&rl(body));
        assert!(e.contains(needle), "{body:?}: expected {needle:?} in {e}");
    }
    let e = problems(
        &rl("requests = 1\nper = \"1s\"\nby = \"credential\"")
            .replace("name = \"iris\"", "name = \"iris\"\nauth = \"none\""),
    );
    assert!(
        e.contains("service[0].rate_limit[0].by") && e.contains("auth = \"none\""),
        "{e}"
    );
}

const TWO_DEPLOYMENTS: &str = r#"
[[tls.certificates]]
cname = "scoring.example.com"
cert = "certs/fullchain.pem"
key = "certs/key.pem"

[[service]]
name = "iris"
scoring_timeout = "5s"
max_concurrent_requests_per_backend = 2
traffic = { blue = 90, green = 10 }

[service.health]
period = "3s"

[[service.deployment]]
name = "blue"
backends = ["http://127.0.0.1:5001"]

[[service.deployment]]
name = "green"
backends = ["http://127.0.0.1:5002"]
scoring_timeout = "9s"
pinnable = false

[service.deployment.health]
path = "/live"
"#;

#[test]
fn deployments_take_the_services_settings_key_by_key() {
    let c = parse(TWO_DEPLOYMENTS).unwrap();
    let s = &c.services[0];
    let d = s.resolved_deployments();
    assert_eq!(d.len(), 2);
    assert_eq!((d[0].name.as_str(), d[1].name.as_str()), ("blue", "green"));
    assert_eq!(d[0].scoring_timeout, Duration::from_secs(5));
    assert_eq!(d[1].scoring_timeout, Duration::from_secs(9));
    assert_eq!(d[1].max_concurrent_requests_per_backend, 2);
    assert_eq!(
        (d[0].health.path.as_str(), d[1].health.path.as_str()),
        ("/", "/live")
    );
    assert_eq!(d[1].health.period, Duration::from_secs(3));
    assert!(d[0].pinnable && !d[1].pinnable);
    assert_eq!(traffic_string(&s.traffic), "blue=90,green=10");
    assert!(s.mirror_traffic.is_empty());
    assert_eq!(s.mirror, MirrorConfig::default());
}

#[test]
fn a_backends_service_is_one_default_deployment_at_100() {
    let c = parse(MINIMAL).unwrap();
    let s = &c.services[0];
    let d = s.resolved_deployments();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].name, "default");
    assert_eq!(d[0].backends, s.backends);
    assert_eq!(traffic_string(&s.traffic), "default=100");
    let c = parse(&MINIMAL.replace(
        "name = \"iris\"",
        "name = \"iris\"\ntraffic = { default = 0 }",
    ))
    .unwrap();
    assert_eq!(traffic_string(&c.services[0].traffic), "default=0");
}

#[test]
fn weights_not_named_are_zero_and_a_mirror_is_kept() {
    let c = parse(&TWO_DEPLOYMENTS.replace(
        "traffic = { blue = 90, green = 10 }",
        "traffic = { blue = 100 }\nmirror_traffic = { green = 10 }\nmirror_headers = [\"X-Tenant\"]\nmirror_queue = 0",
    ))
    .unwrap();
    let s = &c.services[0];
    assert_eq!(traffic_string(&s.traffic), "blue=100,green=0");
    assert_eq!(traffic_string(&s.mirror_traffic), "green=10");
    assert_eq!(s.mirror.headers, vec!["x-tenant".to_string()]);
    assert_eq!(s.mirror.queue, 0);
}

/// Every rule of contract §8 is a config error that names its key.
#[test]
fn every_deployment_rule_names_its_key() {
    let t = "traffic = { blue = 90, green = 10 }";
    let cases: Vec<(String, &str)> = vec![
        // backends and deployments together
        (
            TWO_DEPLOYMENTS.replace(t, &format!("{t}\nbackends = [\"http://127.0.0.1:5009\"]")),
            "service[0].deployment",
        ),
        // several deployments without traffic
        (TWO_DEPLOYMENTS.replace(t, ""), "service[0].traffic"),
        // a sum that is neither 100 nor 0
        (
            TWO_DEPLOYMENTS.replace(t, "traffic = { blue = 90, green = 20 }"),
            "service[0].traffic: the live weights sum to 110",
        ),
        // not a whole number, out of range
        (
            TWO_DEPLOYMENTS.replace(t, "traffic = { blue = 90.5, green = 9.5 }"),
            "service[0].traffic.blue",
        ),
        (
            TWO_DEPLOYMENTS.replace(t, "traffic = { blue = 101, green = 0 }"),
            "service[0].traffic.blue",
        ),
        (
            TWO_DEPLOYMENTS.replace(t, "traffic = { blue = -10, green = 110 }"),
            "service[0].traffic.blue",
        ),
        // an unknown deployment
        (
            TWO_DEPLOYMENTS.replace(t, "traffic = { blue = 90, red = 10 }"),
            "service[0].traffic.red",
        ),
        (
            MINIMAL.replace(
                "name = \"iris\"",
                "name = \"iris\"\ntraffic = { blue = 100 }",
            ),
            "service[0].traffic.blue",
        ),
        // the mirror: unknown, more than one, over 50, with live weight
        (
            TWO_DEPLOYMENTS.replace(t, &format!("{t}\nmirror_traffic = {{ red = 10 }}")),
            "service[0].mirror_traffic.red",
        ),
        (
            TWO_DEPLOYMENTS.replace(
                t,
                "traffic = { blue = 100 }\nmirror_traffic = { green = 10, blue = 5 }",
            ),
            "service[0].mirror_traffic: at most one",
        ),
        (
            TWO_DEPLOYMENTS.replace(
                t,
                "traffic = { blue = 100 }\nmirror_traffic = { green = 51 }",
            ),
            "service[0].mirror_traffic.green",
        ),
        (
            TWO_DEPLOYMENTS.replace(t, &format!("{t}\nmirror_traffic = {{ green = 10 }}")),
            "service[0].mirror_traffic.green: \"green\" takes 10 percent",
        ),
        // the mirror's settings
        (
            TWO_DEPLOYMENTS.replace(t, &format!("{t}\nmirror_headers = [\"Authorization\"]")),
            "service[0].mirror_headers[0]",
        ),
        (
            TWO_DEPLOYMENTS.replace(t, &format!("{t}\nmirror_headers = [\"bad header\"]")),
            "service[0].mirror_headers[0]",
        ),
        (
            TWO_DEPLOYMENTS.replace(t, &format!("{t}\nmirror_max_in_flight = 0")),
            "service[0].mirror_max_in_flight",
        ),
        (
            TWO_DEPLOYMENTS.replace(t, &format!("{t}\nmirror_tolerance = -1.0")),
            "service[0].mirror_tolerance",
        ),
        (
            TWO_DEPLOYMENTS.replace(t, &format!("{t}\nmirror_max_body = \"big\"")),
            "service[0].mirror_max_body",
        ),
        // deployment names: the service name rules, unique
        (
            TWO_DEPLOYMENTS.replace("name = \"green\"", "name = \"Green\""),
            "service[0].deployment[1].name",
        ),
        (
            TWO_DEPLOYMENTS.replace("name = \"green\"", "name = \"blue\""),
            "service[0].deployment[1].name: \"blue\" is defined twice",
        ),
        // a backend URL in two deployments; none at all; a bad one
        (
            TWO_DEPLOYMENTS.replace("5002", "5001"),
            "service[0].deployment[1].backends[0]",
        ),
        (
            TWO_DEPLOYMENTS.replace("backends = [\"http://127.0.0.1:5002\"]", ""),
            "service[0].deployment[1].backends",
        ),
        (
            TWO_DEPLOYMENTS.replace("\"http://127.0.0.1:5002\"", "\"ftp://x\""),
            "service[0].deployment[1].backends[0]",
        ),
        // per-deployment settings are checked
        (
            TWO_DEPLOYMENTS.replace("scoring_timeout = \"9s\"", "scoring_timeout = \"0s\""),
            "service[0].deployment[1].scoring_timeout",
        ),
        (
            TWO_DEPLOYMENTS.replace("path = \"/live\"", "path = \"live\""),
            "service[0].deployment[1].health.path",
        ),
        (
            TWO_DEPLOYMENTS.replace("pinnable = false", "backend_protocol = \"h3\""),
            "service[0].deployment[1].backend_protocol",
        ),
        // service keys only
        (
            TWO_DEPLOYMENTS.replace("pinnable = false", "max_body = \"1MiB\""),
            "service[0].deployment[1].max_body: max_body is a service key only",
        ),
        (
            TWO_DEPLOYMENTS.replace("pinnable = false", "auth = \"none\""),
            "service[0].deployment[1].auth",
        ),
        (
            TWO_DEPLOYMENTS.replace("pinnable = false", "mirror_traffic = { blue = 1 }"),
            "service[0].deployment[1].mirror_traffic",
        ),
    ];
    for (text, key) in cases {
        let e = problems(&text);
        assert!(e.contains(key), "expected {key:?} in: {e}");
    }
}

#[test]
fn an_unknown_deployment_key_is_an_error() {
    let e = problems(&TWO_DEPLOYMENTS.replace("pinnable = false", "pinable = false"));
    assert!(e.contains("pinable"), "{e}");
}
