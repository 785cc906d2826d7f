//! Sealing on the way in and out: a record's secrets (service keys, the private signing keys)
//! are sealed with the key the store's meta names before a write, and unsealed after a read,
//! bound to the record's kind, name, slot and revision.

use super::RedisStore;
use crate::crypto::Secret;
use crate::crypto::seal::{Binding, SealError};
use crate::store::records::{ServiceRecord, SigningRecord};

impl RedisStore {
    /// The sealing key id to seal with: the one the store's meta names.
    fn seal_with(&self) -> Option<String> {
        self.meta_key_id.lock().unwrap().clone()
    }

    pub(crate) fn seal_service(&self, name: &str, rec: &ServiceRecord) -> ServiceRecord {
        let with = self.seal_with();
        let mut out = rec.clone();
        for (slot, v) in [
            ("primary", &mut out.primary_key),
            ("secondary", &mut out.secondary_key),
        ] {
            if let Some(k) = v {
                *k = Secret::new(self.sealer.seal(
                    k,
                    &Binding {
                        kind: "svc",
                        name,
                        slot,
                        revision: rec.revision,
                    },
                    with.as_deref(),
                ));
            }
        }
        out
    }

    pub(crate) fn unseal_service(
        &self,
        name: &str,
        mut rec: ServiceRecord,
    ) -> Result<ServiceRecord, SealError> {
        let revision = rec.revision;
        for (slot, v) in [
            ("primary", &mut rec.primary_key),
            ("secondary", &mut rec.secondary_key),
        ] {
            if let Some(k) = v {
                *k = self.sealer.unseal(
                    k.expose(),
                    &Binding {
                        kind: "svc",
                        name,
                        slot,
                        revision,
                    },
                )?;
            }
        }
        Ok(rec)
    }

    pub(crate) fn seal_signing(&self, rec: &SigningRecord) -> SigningRecord {
        let with = self.seal_with();
        let mut out = rec.clone();
        for k in &mut out.keys {
            k.private = Secret::new(self.sealer.seal(
                &k.private,
                &Binding {
                    kind: "signing",
                    name: &k.kid,
                    slot: "private",
                    revision: rec.revision,
                },
                with.as_deref(),
            ));
        }
        out
    }

    pub(crate) fn unseal_signing(
        &self,
        mut rec: SigningRecord,
    ) -> Result<SigningRecord, SealError> {
        let revision = rec.revision;
        for k in &mut rec.keys {
            k.private = self.sealer.unseal(
                k.private.expose(),
                &Binding {
                    kind: "signing",
                    name: &k.kid,
                    slot: "private",
                    revision,
                },
            )?;
        }
        Ok(rec)
    }
}
