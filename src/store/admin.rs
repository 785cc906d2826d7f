//! The store commands an operator runs by hand (`scoregate store import`, `scoregate store
//! reseal`) and what `scoregate check` learns from a shared store. Each talks to the store
//! directly with the config's `[state.redis]` settings; none needs a running gateway.

use std::time::SystemTime;

use super::StoreError;
use super::cache;
use super::redis::{FORMAT_VERSION, RedisStore};
use crate::config::{Config, RedisConfig, StoreConfig};
use crate::store::StoreMetrics;

fn redis_config(config: &Config) -> Result<&RedisConfig, StoreError> {
    match &config.store {
        StoreConfig::Redis(r) => Ok(r),
        StoreConfig::File => Err(StoreError::Config(
            "this config uses the file store: set [state] store = \"redis\" and [state.redis] first"
                .into(),
        )),
    }
}

async fn connect(config: &Config) -> Result<RedisStore, StoreError> {
    let rc = redis_config(config)?.clone();
    let store = tokio::task::spawn_blocking(move || RedisStore::new(&rc, StoreMetrics::new()))
        .await
        .expect("building the client does not panic")?;
    store.connect().await?;
    Ok(store)
}

/// `scoregate store import`: writes this replica's file store (`state.json` in `state.dir`)
/// into a shared store that does not yet know those services; refuses otherwise (nothing is
/// overwritten). Returns what it wrote, in words.
pub async fn import(config: &Config) -> Result<String, StoreError> {
    let dir = config.state_dir.clone();
    let local = tokio::task::spawn_blocking(move || cache::read_file_store(&dir))
        .await
        .expect("reading the file store does not panic")?
        .ok_or_else(|| {
            StoreError::Refused(format!(
                "no file store (state.json without a source block) in {}",
                config.state_dir.display()
            ))
        })?;
    let store = connect(config).await?;
    store.ensure_meta().await?;
    let remote = store.read_all().await?;
    let known: Vec<&String> = local
        .services
        .keys()
        .filter(|n| remote.state.services.contains_key(*n) || remote.unsealable.contains(*n))
        .collect();
    if !known.is_empty() {
        return Err(StoreError::Refused(format!(
            "the shared store already knows {}: nothing imported (import only moves a file store into a store that does not know its services)",
            known
                .iter()
                .map(|n| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    for (name, rec) in &local.services {
        let mut rec = rec.clone();
        rec.revision = rec.revision.max(1);
        store.cas_service(name, 0, Some(&rec)).await?;
    }
    let mut signing = "the shared store's signing keys kept".to_string();
    if remote.state.signing.keys.is_empty() && !local.signing.keys.is_empty() {
        let mut s = local.signing.clone();
        s.revision = s.revision.max(1);
        store.cas_signing(0, &s).await?;
        signing = format!("{} signing key(s) imported", s.keys.len());
    }
    Ok(format!(
        "imported {} service(s) into {} (prefix {:?}); {signing}",
        local.services.len(),
        store.url,
        store.prefix
    ))
}

/// `scoregate store reseal`: after every replica holds the new sealing key (as
/// `secret_key_file`, with the old one as `previous_secret_key_file`), re-seals every record
/// with the new key and names it in the meta record. Replicas holding only the old key stop
/// being ready, so run it once the rollout is complete.
pub async fn reseal(config: &Config) -> Result<String, StoreError> {
    let store = connect(config).await?;
    let Some(new_id) = store.sealer.key_id().map(str::to_string) else {
        return Err(StoreError::Config(
            "reseal needs state.redis.secret_key_file (the new key)".into(),
        ));
    };
    store.ensure_meta().await?;
    let all = store.read_all().await?;
    if !all.unsealable.is_empty() {
        return Err(StoreError::Refused(format!(
            "records do not unseal with this replica's keys ({}): set previous_secret_key_file to the key they were sealed with",
            all.unsealable.join(", ")
        )));
    }
    store.set_meta_key_id(&new_id).await?;
    let mut n = 0;
    for (name, rec) in &all.state.services {
        let mut next = rec.clone();
        next.revision += 1;
        next.updated_at = super::plan::rfc3339(SystemTime::now());
        store.cas_service(name, rec.revision, Some(&next)).await?;
        n += 1;
    }
    if !all.state.signing.keys.is_empty() {
        let mut s = all.state.signing.clone();
        s.revision += 1;
        store.cas_signing(all.state.signing.revision, &s).await?;
        n += 1;
    }
    Ok(format!(
        "{n} record(s) re-sealed with key {new_id} in {} (prefix {:?})",
        store.url, store.prefix
    ))
}

/// Deletes every key under the config's prefix (for the bench's throwaway prefix); returns how
/// many keys went.
pub async fn purge(config: &Config) -> Result<u64, StoreError> {
    connect(config).await?.purge().await
}

/// What `scoregate check` reports of a shared store: `Ok` lines to print, and warnings; an
/// `Err` fails the check (a wrong password, a Redis Cluster, a sealing key that does not
/// unseal the store, a newer format).
pub async fn inspect(config: &Config) -> Result<(Vec<String>, Vec<String>), StoreError> {
    let rc = redis_config(config)?;
    let mut lines = vec![format!(
        "store    redis {} prefix {:?}",
        rc.display_url, rc.prefix
    )];
    let mut warnings = Vec::new();
    let host_is_loopback = {
        let rest = rc.display_url.split("://").nth(1).unwrap_or("");
        let host = rest.split(['/', ':']).next().unwrap_or("");
        matches!(host, "127.0.0.1" | "localhost" | "::1" | "[::1]")
    };
    if rc.display_url.starts_with("redis://") && !host_is_loopback {
        warnings.push(format!(
            "state.redis.url: {} is plain redis:// to another host: credentials and sealed secrets cross the network without TLS (use rediss://)",
            rc.display_url
        ));
    }
    if rc.secret_key.is_none() {
        warnings.push(
            "state.redis.allow_plaintext_secrets = true: keys are stored unsealed in Redis".into(),
        );
    }
    let store = match connect(config).await {
        Ok(s) => s,
        Err(StoreError::Unavailable(why)) => {
            warnings.push(format!(
                "the shared store did not answer ({why}): a replica starts from its cache, if it has one"
            ));
            return Ok((lines, warnings));
        }
        Err(e) => return Err(e),
    };
    let (version, cluster) = store.server_facts().await?;
    if cluster {
        return Err(StoreError::Config(
            "the shared store is a Redis Cluster, which scoregate does not support (its scripts touch several keys): use one endpoint (standalone or a managed primary)".into(),
        ));
    }
    lines.push(format!("           answered (Redis {version})"));
    let all = store.read_all().await?;
    if all.meta_missing {
        lines.push(format!(
            "           empty (format {FORMAT_VERSION} is written at the first start)"
        ));
    } else {
        lines.push(format!(
            "           format {FORMAT_VERSION}, {} service(s), {} signing key(s), sealing key {}",
            all.state.services.len(),
            all.state.signing.keys.len(),
            store.sealer.key_id().unwrap_or("none (plaintext)")
        ));
    }
    if !all.unsealable.is_empty() {
        return Err(StoreError::NotReady(format!(
            "records do not unseal with state.redis.secret_key_file: {}",
            all.unsealable.join(", ")
        )));
    }
    let replicas = store.live_replicas().await?;
    lines.push(format!(
        "           {} live replica(s){}",
        replicas.len(),
        if replicas.is_empty() {
            String::new()
        } else {
            format!(
                ": {}",
                replicas
                    .iter()
                    .map(|r| r.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    ));
    Ok((lines, warnings))
}
