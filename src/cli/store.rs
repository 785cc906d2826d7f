//! `scoregate store import | reseal`: the shared store (contract §6), reached directly with the
//! config's `[state.redis]`, not through a running gateway.

use super::ConfigPath;
use super::args::StoreCommand;

pub fn run(command: StoreCommand, path: &ConfigPath) -> anyhow::Result<()> {
    let config = path.load()?;
    let done = super::runtime()?.block_on(async {
        match command {
            StoreCommand::Import => crate::store::admin::import(&config).await,
            StoreCommand::Reseal => crate::store::admin::reseal(&config).await,
        }
    })?;
    super::print_out(&done);
    Ok(())
}
