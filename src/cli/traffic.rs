//! `scoregate traffic NAME [DEPLOYMENT=PERCENT ...] [--mirror DEPLOYMENT=PERCENT | none]`: shows
//! or sets a service's live split and mirror (contract §8), like `az ml online-endpoint update
//! --traffic "blue=90 green=10" --mirror-traffic "green=10"`. Without assignments it prints
//! `{"traffic", "mirrorTraffic"}` from `GET /v1/services/NAME`; with them it sends only what was
//! given to `PUT /v1/services/NAME/traffic` (each map replaces the whole one in force) and
//! prints the answer.

use http::Method;
use serde_json::{Map, Value, json};

use super::admin::call;
use super::args::AdminOptions;
use super::{UsageError, path_segment, print_out, runtime};

/// `blue=90` pairs into a JSON object of whole percentages.
fn assignments(what: &str, pairs: &[String]) -> anyhow::Result<Map<String, Value>> {
    let mut m = Map::new();
    for p in pairs {
        let (name, pct) = p.split_once('=').ok_or_else(|| {
            UsageError(format!(
                "{what}: {p:?} is not DEPLOYMENT=PERCENT (e.g. blue=90)"
            ))
        })?;
        let pct: u64 = pct.trim().trim_end_matches('%').parse().map_err(|_| {
            UsageError(format!(
                "{what}: the percentage of {name:?} must be a whole number from 0 to 100"
            ))
        })?;
        if m.insert(name.trim().to_string(), json!(pct)).is_some() {
            return Err(UsageError(format!("{what}: {name:?} is given twice")).into());
        }
    }
    Ok(m)
}

/// The `PUT` body for the arguments (`None`: nothing to set, show only).
pub fn request_body(traffic: &[String], mirror: Option<&str>) -> anyhow::Result<Option<Value>> {
    let mut body = Map::new();
    if !traffic.is_empty() {
        body.insert(
            "traffic".into(),
            Value::Object(assignments("traffic", traffic)?),
        );
    }
    match mirror {
        None => {}
        Some("none") => {
            body.insert("mirrorTraffic".into(), json!({}));
        }
        Some(m) => {
            let pairs: Vec<String> = m.split_whitespace().map(str::to_string).collect();
            body.insert(
                "mirrorTraffic".into(),
                Value::Object(assignments("--mirror", &pairs)?),
            );
        }
    }
    Ok((!body.is_empty()).then_some(Value::Object(body)))
}

pub fn run(
    opts: &AdminOptions,
    name: &str,
    traffic: &[String],
    mirror: Option<&str>,
) -> anyhow::Result<()> {
    let body = request_body(traffic, mirror)?;
    let config = opts.config(true, false)?;
    let client = opts.client(config.as_ref(), true)?;
    let path = format!("/v1/services/{}", path_segment(name));
    let v = runtime()?.block_on(async {
        match body {
            Some(b) => call(&client, Method::PUT, &format!("{path}/traffic"), Some(b)).await,
            None => call(&client, Method::GET, &path, None).await,
        }
    })?;
    let out = json!({"traffic": v["traffic"], "mirrorTraffic": v["mirrorTraffic"]});
    print_out(&serde_json::to_string_pretty(&out)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_become_the_put_body() {
        assert_eq!(request_body(&[], None).unwrap(), None);
        let t = ["blue=90".to_string(), "green=10".to_string()];
        assert_eq!(
            request_body(&t, None).unwrap(),
            Some(json!({"traffic": {"blue": 90, "green": 10}}))
        );
        assert_eq!(
            request_body(&[], Some("green=10")).unwrap(),
            Some(json!({"mirrorTraffic": {"green": 10}}))
        );
        assert_eq!(
            request_body(&t, Some("none")).unwrap(),
            Some(json!({"traffic": {"blue": 90, "green": 10}, "mirrorTraffic": {}}))
        );
        for bad in ["blue", "blue=x", "blue=-1", "blue=1.5"] {
            assert!(request_body(&[bad.to_string()], None).is_err(), "{bad}");
        }
        assert!(request_body(&["a=1".into(), "a=2".into()], None).is_err());
    }
}
