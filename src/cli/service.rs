//! `scoregate service list | show NAME`: the services the gateway serves (`GET /v1/services`).

use http::Method;

use super::admin::admin_call;
use super::args::{AdminOptions, Format, ServiceCommand};
use super::output::{Output, Table};
use super::path_segment;

pub fn run(command: ServiceCommand, opts: &AdminOptions) -> anyhow::Result<()> {
    match command {
        ServiceCommand::List { output } => admin_call(
            opts,
            Method::GET,
            "/v1/services",
            None,
            match output {
                Format::Json => Output::Json,
                Format::Table => Output::Table(Table::Services),
            },
        ),
        ServiceCommand::Show { name } => admin_call(
            opts,
            Method::GET,
            &format!("/v1/services/{}", path_segment(&name)),
            None,
            Output::Json,
        ),
    }
}
