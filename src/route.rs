//! Routing: the Azure ML scoring URL shapes, matched on the raw path bytes.
//!
//! Nothing is decoded or normalised before matching: a path that would only match after
//! percent-decoding, dot-segment removal, slash merging or case folding does not match at all.
//! That way what the gateway authorises is exactly what it forwards.

use http::Method;

const PREFIX: &str = "/api/v1/service/";

/// Which endpoint of a service a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Score,
    Swagger,
}

impl Endpoint {
    /// The one method each endpoint takes (sent back in `Allow` on a 405).
    pub fn method(self) -> Method {
        match self {
            Endpoint::Score => Method::POST,
            Endpoint::Swagger => Method::GET,
        }
    }

    pub fn allow_header(self) -> &'static str {
        match self {
            Endpoint::Score => "POST",
            Endpoint::Swagger => "GET",
        }
    }
}

/// A path of the scoring shape with a syntactically valid service name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route<'a> {
    pub service: &'a str,
    pub endpoint: Endpoint,
}

/// Matches `/api/v1/service/NAME/score` and `/api/v1/service/NAME/swagger.json` exactly.
/// `None` means any other path (404 `NotFound`).
pub fn parse(path: &str) -> Option<Route<'_>> {
    let rest = path.strip_prefix(PREFIX)?;
    let slash = rest.find('/')?;
    let (service, tail) = rest.split_at(slash);
    let endpoint = match tail {
        "/score" => Endpoint::Score,
        "/swagger.json" => Endpoint::Swagger,
        _ => return None,
    };
    valid_service_name(service).then_some(Route { service, endpoint })
}

/// 3 to 32 characters of `a-z 0-9 -`, starting with a letter, not ending with `-`.
pub fn valid_service_name(name: &str) -> bool {
    let b = name.as_bytes();
    (3..=32).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b[b.len() - 1] != b'-'
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_two_endpoints() {
        assert_eq!(
            parse("/api/v1/service/iris/score"),
            Some(Route {
                service: "iris",
                endpoint: Endpoint::Score
            })
        );
        assert_eq!(
            parse("/api/v1/service/other-model-2/swagger.json"),
            Some(Route {
                service: "other-model-2",
                endpoint: Endpoint::Swagger
            })
        );
    }

    #[test]
    fn decoding_and_normalising_tricks_do_not_match() {
        for p in [
            "/api/v1/service/iris/score/",
            "/api/v1/service/iris/scor%65",
            "/api/v1/service/%69ris/score",
            "/api/v1/service/iris%2Fscore",
            "/api/v1/service/iris/../iris/score",
            "/api/v1/service/./iris/score",
            "/api/v1/service//iris/score",
            "/api/v1/service/iris//score",
            "//api/v1/service/iris/score",
            "/api/v1/service/IRIS/score",
            "/API/v1/service/iris/score",
            "/api/v1/service/iris/Score",
            "/api/v1/service/iris/score.json",
            "/api/v1/service/iris",
            "/api/v1/service/iris/",
            "/api/v1/service//score",
            "/api/v1/service/iris/x/score",
            "/api/v1/service/iris/swagger.json/",
            "/api/v1/service/iris;x/score",
            "/api/v1/service/iris/score;x",
            "/",
            "",
        ] {
            assert_eq!(parse(p), None, "{p} must not match");
        }
    }

    #[test]
    fn service_name_rules() {
        for ok in ["abc", "iris", "a-b", "a1", "m0del-2x", &"a".repeat(32)] {
            if ok.len() >= 3 {
                assert!(valid_service_name(ok), "{ok}");
            }
        }
        for bad in [
            "ab",
            "1abc",
            "-abc",
            "abc-",
            "aBc",
            "ab_c",
            "ab.c",
            "",
            &"a".repeat(33),
            "ab c",
            "abč",
        ] {
            assert!(!valid_service_name(bad), "{bad}");
        }
    }

    proptest::proptest! {
        /// Whatever matches is exactly the canonical shape: prefix, a valid name, one of the two
        /// endpoints — so no path matches after decoding or normalising.
        #[test]
        fn only_canonical_paths_match(path in "(/api/v1/service/)?[a-zA-Z0-9%./;_-]{0,24}(/score|/swagger.json|/)?") {
            if let Some(r) = parse(&path) {
                let suffix = match r.endpoint {
                    Endpoint::Score => "/score",
                    Endpoint::Swagger => "/swagger.json",
                };
                proptest::prop_assert_eq!(path.clone(), format!("{PREFIX}{}{suffix}", r.service));
                proptest::prop_assert!(valid_service_name(r.service));
                proptest::prop_assert!(!path.contains('%') && !path.contains("/./") && !path.contains("//"));
            }
        }

        /// Every valid name routes, and any percent-encoding of one of its bytes does not.
        #[test]
        fn valid_names_route_and_encoded_ones_do_not(name in "[a-z][a-z0-9-]{1,30}[a-z0-9]", at in proptest::num::usize::ANY) {
            let path = format!("{PREFIX}{name}/score");
            proptest::prop_assert_eq!(parse(&path).map(|r| r.service), Some(name.as_str()));
            let i = at % name.len();
            let encoded = format!("{PREFIX}{}%{:02X}{}/score", &name[..i], name.as_bytes()[i], &name[i + 1..]);
            proptest::prop_assert_eq!(parse(&encoded), None);
        }
    }
}
