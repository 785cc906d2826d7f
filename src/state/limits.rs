//! The fleet-wide rate limiter's link to the Redis store: `limit` knows the store only as
//! `limit::fleet::SharedBuckets`, and `store` knows nothing of `limit`; this is where the two meet.

use std::sync::Arc;
use std::time::Duration;

use crate::limit::fleet::{Answer, Pending, SharedBuckets};
use crate::store::redis::RedisStore;

impl SharedBuckets for RedisStore {
    fn is_up(&self) -> bool {
        RedisStore::is_up(self)
    }

    fn live_replicas(&self) -> u64 {
        self.live_replica_count()
    }

    fn prefix(&self) -> &str {
        &self.prefix
    }

    fn take(self: Arc<Self>, keys: Vec<String>, params: &[i64], timeout: Duration) -> Pending {
        let params = params.to_vec();
        Box::pin(async move {
            let t = self.take_within(keys, params, timeout).await?;
            Ok(Answer {
                admitted: t.admitted,
                now_us: t.now_us,
                tats_us: t.tats_us,
            })
        })
    }
}
