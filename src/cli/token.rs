//! `scoregate token NAME [--subject S] [--value]`: a token for a token-mode service
//! (`POST /v1/services/NAME/token`).

use http::Method;

use super::admin::admin_call;
use super::args::AdminOptions;
use super::output::Output;
use super::path_segment;

pub fn run(
    opts: &AdminOptions,
    name: &str,
    subject: Option<String>,
    value: bool,
) -> anyhow::Result<()> {
    admin_call(
        opts,
        Method::POST,
        &format!("/v1/services/{}/token", path_segment(name)),
        subject.map(|s| serde_json::json!({ "subject": s })),
        if value {
            Output::Field("accessToken")
        } else {
            Output::Json
        },
    )
}
