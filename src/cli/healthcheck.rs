//! `scoregate healthcheck [--ready]`: the container HEALTHCHECK, `GET /healthz` (or `/readyz`)
//! of the admin API, which needs no token.

use std::time::Duration;

use anyhow::bail;
use http::Method;

use super::args::AdminOptions;
use super::{print_out, runtime};

/// Exit 0 only on 200.
pub fn run(opts: &AdminOptions, ready: bool, timeout: Duration) -> anyhow::Result<()> {
    let config = opts.config(false, false)?;
    let client = opts.client(config.as_ref(), false)?.with_timeout(timeout);
    let path = if ready { "/readyz" } else { "/healthz" };
    let r = runtime()?.block_on(client.send(Method::GET, path, bytes::Bytes::new()))?;
    let text = String::from_utf8_lossy(&r.body);
    if !r.status.is_success() {
        bail!("{path}: {} {}", r.status.as_u16(), text.trim());
    }
    print_out(text.trim());
    Ok(())
}
