//! `scoregate keys list NAME | regen NAME --key primary|secondary [--value V | -]`: a key-mode
//! service's keys (`listKeys`, `regenerateKeys`).

use std::io::Read;

use http::Method;
use serde_json::Value;

use super::admin::admin_call;
use super::args::{AdminOptions, Format, KeysCommand};
use super::output::{Output, Table};
use super::path_segment;

pub fn run(command: KeysCommand, opts: &AdminOptions) -> anyhow::Result<()> {
    match command {
        KeysCommand::List {
            name,
            value,
            output,
        } => list(opts, &name, value, output),
        KeysCommand::Regen {
            name,
            key,
            new_value,
            print_value,
        } => regen(opts, &name, &key, new_value.as_deref(), print_value),
    }
}

/// `keys list`.
fn list(opts: &AdminOptions, name: &str, value: bool, format: Format) -> anyhow::Result<()> {
    admin_call(
        opts,
        Method::POST,
        &format!("/v1/services/{}/listKeys", path_segment(name)),
        None,
        match (value, format) {
            (true, _) => Output::Keys,
            (false, Format::Json) => Output::Json,
            (false, Format::Table) => Output::Table(Table::Keys),
        },
    )
}

/// `keys regen`: `value` of `-` reads the new key from stdin (so it stays out of argv).
fn regen(
    opts: &AdminOptions,
    name: &str,
    key: &str,
    value: Option<&str>,
    print_value: bool,
) -> anyhow::Result<()> {
    let key_type = if key == "primary" {
        "Primary"
    } else {
        "Secondary"
    };
    let value = match value {
        Some("-") => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            Some(s.trim().to_string())
        }
        v => v.map(str::to_string),
    };
    let mut body = serde_json::json!({ "keyType": key_type });
    if let Some(v) = value {
        body["keyValue"] = Value::String(v);
    }
    let field = if key == "primary" {
        "primaryKey"
    } else {
        "secondaryKey"
    };
    admin_call(
        opts,
        Method::POST,
        &format!("/v1/services/{}/regenerateKeys", path_segment(name)),
        Some(body),
        if print_value {
            Output::Field(field)
        } else {
            Output::Json
        },
    )
}
