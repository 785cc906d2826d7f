//! How admin commands print an answer: the JSON as it came (indented), one field bare, or a table
//! of aligned columns for people (`-o table`, as `az ... -o table`).

use anyhow::Context;
use serde_json::Value;

/// What to print from an admin answer.
pub enum Output {
    Json,
    /// One string field of the answer, bare.
    Field(&'static str),
    /// `primaryKey` and `secondaryKey`, one per line.
    Keys,
    Table(Table),
}

/// The tables, one per answer shape.
pub enum Table {
    /// `GET /v1/services`: name, state, auth mode, scoring URI.
    Services,
    /// `listKeys`: one row per key.
    Keys,
    /// `POST /v1/reload`: what changed, what needs a restart.
    Reload,
}

impl Output {
    pub fn render(&self, v: &Value) -> anyhow::Result<String> {
        Ok(match self {
            Output::Json => serde_json::to_string_pretty(v)?,
            Output::Field(f) => v[f]
                .as_str()
                .context("the answer lacks the field")?
                .to_string(),
            Output::Keys => format!("{}\n{}", text(&v["primaryKey"]), text(&v["secondaryKey"])),
            Output::Table(Table::Services) => {
                let mut rows = vec![row(["NAME", "STATE", "AUTH", "SCORING URI"])];
                for s in v.as_array().context("expected a list of services")? {
                    rows.push(row([
                        text(&s["name"]),
                        text(&s["state"]),
                        text(&s["authMode"]),
                        text(&s["scoringUri"]),
                    ]));
                }
                columns(&rows)
            }
            Output::Table(Table::Keys) => columns(&[
                row(["KEY", "VALUE"]),
                row(["primary", text(&v["primaryKey"])]),
                row(["secondary", text(&v["secondaryKey"])]),
            ]),
            Output::Table(Table::Reload) => {
                let list = |x: &Value| match strings(x) {
                    l if l.is_empty() => "(nothing)".to_string(),
                    l => l.join(", "),
                };
                columns(&[
                    row(["changed", &list(&v["changed"])]),
                    row(["restart required", &list(&v["restartRequired"])]),
                ])
            }
        })
    }
}

/// The strings of a JSON array (anything else: none).
pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|x| text(x).to_string()).collect())
        .unwrap_or_default()
}

/// A string value as it reads; `-` for a missing one, other JSON as written.
fn text(v: &Value) -> &str {
    match v {
        Value::String(s) => s,
        Value::Null => "-",
        _ => "?",
    }
}

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

/// Rows as left-aligned columns two spaces apart, without trailing spaces.
fn columns(rows: &[Vec<String>]) -> String {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|r| {
            let mut line = String::new();
            for (i, c) in r.iter().enumerate() {
                line.push_str(c);
                if i + 1 < r.len() {
                    let pad = widths[i] - c.chars().count() + 2;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            line
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_their_columns() {
        let v = json!([
            {"name": "iris", "state": "Succeeded", "authMode": "key", "scoringUri": "https://a/x"},
            {"name": "penguins", "state": "Unhealthy", "authMode": "token", "scoringUri": "https://a/y"}
        ]);
        let t = Output::Table(Table::Services).render(&v).unwrap();
        assert_eq!(
            t,
            "NAME      STATE      AUTH   SCORING URI\n\
             iris      Succeeded  key    https://a/x\n\
             penguins  Unhealthy  token  https://a/y"
        );
        let r = Output::Table(Table::Reload)
            .render(&json!({"changed": ["service.iris"], "restartRequired": []}))
            .unwrap();
        assert_eq!(
            r,
            "changed           service.iris\nrestart required  (nothing)"
        );
    }
}
