//! Writing the store: compare-and-set of one record on its revision (`scripts::CAS`, which also
//! announces the change on the channel), the write-back after data loss, the meta's sealing key
//! id, and `purge` for throwaway prefixes.

use fred::prelude::*;

use super::RedisStore;
use crate::store::StoreError;
use crate::store::records::{ServiceRecord, SigningRecord};

impl RedisStore {
    /// Compare-and-set of a service record: `expected` is the revision it was planned on (0:
    /// create-if-absent), `next` `None` deletes it.
    pub async fn cas_service(
        &self,
        name: &str,
        expected: u64,
        next: Option<&ServiceRecord>,
    ) -> Result<(), StoreError> {
        let (data, rev) = match next {
            Some(r) => (
                serde_json::to_string(&self.seal_service(name, r)).expect("serialises"),
                r.revision,
            ),
            None => (String::new(), expected),
        };
        self.cas(
            vec![self.key(&format!("svc:{name}")), self.key("services")],
            expected,
            data,
            rev,
            name,
            &format!("svc:{name}"),
        )
        .await
    }

    /// Compare-and-set of the signing record.
    pub async fn cas_signing(&self, expected: u64, next: &SigningRecord) -> Result<(), StoreError> {
        let data = serde_json::to_string(&self.seal_signing(next)).expect("serialises");
        self.cas(
            vec![self.key("signing")],
            expected,
            data,
            next.revision,
            "",
            "signing",
        )
        .await
    }

    async fn cas(
        &self,
        keys: Vec<String>,
        expected: u64,
        data: String,
        rev: u64,
        member: &str,
        message: &str,
    ) -> Result<(), StoreError> {
        let (applied, current): (i64, String) = self
            .op(
                "script",
                self.cas.evalsha_with_reload(
                    &self.client,
                    keys,
                    vec![
                        expected.to_string(),
                        data,
                        rev.to_string(),
                        self.channel(),
                        member.to_string(),
                        message.to_string(),
                    ],
                ),
            )
            .await?;
        if applied == 1 {
            Ok(())
        } else {
            tracing::debug!(record = message, expected, current = %current, "store write lost a race; re-reading");
            Err(StoreError::Conflict)
        }
    }

    /// Writes a record back after data loss, only while its revision is the highest.
    pub async fn write_back_service(
        &self,
        name: &str,
        rec: &ServiceRecord,
    ) -> Result<bool, StoreError> {
        let data = serde_json::to_string(&self.seal_service(name, rec)).expect("serialises");
        let done: i64 = self
            .op(
                "script",
                self.write_back.evalsha_with_reload(
                    &self.client,
                    vec![self.key(&format!("svc:{name}")), self.key("services")],
                    vec![
                        rec.revision.to_string(),
                        data,
                        self.channel(),
                        name.to_string(),
                        format!("svc:{name}"),
                    ],
                ),
            )
            .await?;
        Ok(done == 1)
    }

    pub async fn write_back_signing(&self, rec: &SigningRecord) -> Result<bool, StoreError> {
        let data = serde_json::to_string(&self.seal_signing(rec)).expect("serialises");
        let done: i64 = self
            .op(
                "script",
                self.write_back.evalsha_with_reload(
                    &self.client,
                    vec![self.key("signing")],
                    vec![
                        rec.revision.to_string(),
                        data,
                        self.channel(),
                        String::new(),
                        "signing".to_string(),
                    ],
                ),
            )
            .await?;
        Ok(done == 1)
    }

    /// Names `id` as the sealing key in the meta record (after a `reseal`).
    pub async fn set_meta_key_id(&self, id: &str) -> Result<(), StoreError> {
        let _: i64 = self
            .op("write", self.client.hset(self.key("meta"), ("keyId", id)))
            .await?;
        *self.meta_key_id.lock().unwrap() = Some(id.to_string());
        Ok(())
    }

    /// Deletes every key under the prefix (SCAN + UNLINK, a page at a time); returns how many.
    /// For throwaway prefixes (`scoregate bench --store`), never for a fleet's own.
    pub async fn purge(&self) -> Result<u64, StoreError> {
        use fred::types::scan::Scanner;
        use futures_util::TryStreamExt;
        // The prefix is matched literally: glob characters in it are escaped.
        let mut pattern = String::with_capacity(self.prefix.len() + 1);
        for c in self.prefix.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push('*');
        let mut pages = std::pin::pin!(self.client.scan(pattern, Some(500), None));
        let mut removed = 0u64;
        while let Some(mut page) = self.op("read", pages.try_next()).await? {
            if let Some(keys) = page.take_results()
                && !keys.is_empty()
            {
                let n: u64 = self.op("write", self.client.unlink(keys)).await?;
                removed += n;
            }
        }
        Ok(removed)
    }
}
