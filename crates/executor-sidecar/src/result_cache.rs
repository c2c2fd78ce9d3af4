//! The result cache: L1 in process (moka, a TTL per entry) in front of L2 in Redis
//! (shared by every sidecar). Concurrent identical misses make one upstream call: moka
//! runs one loader per key and hands its result to every waiter.
//!
//! Redis is not trusted with answers: an L2 value is served only if it carries the
//! sidecars' HMAC seal for its key (`cache_seal`) and still passes the tool's output
//! schema; anything else is a miss (the tool is called and the entry rewritten),
//! counted in `toolplane_cache_rejected_total{reason}`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use moka::Expiry;
use serde_json::Value;
use toolplane_runtime::metrics as m;

use crate::cache_seal::Sealer;

/// How long an L2 lookup or write may take before it is skipped.
const REDIS_TIMEOUT: Duration = Duration::from_millis(50);
const L1_CAPACITY: u64 = 100_000;

#[derive(Debug)]
struct Entry {
    output: Value,
    ttl: Duration,
}

struct PerEntryTtl;

impl Expiry<String, Arc<Entry>> for PerEntryTtl {
    fn expire_after_create(&self, _key: &String, value: &Arc<Entry>, _now: std::time::Instant) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// Where a cached answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// This caller's own upstream call.
    Upstream,
    /// In process: an earlier call, or a concurrent identical one it waited for.
    Local,
    /// Redis: another sidecar's call.
    Shared,
}

/// The shared cache in Redis and the key its values are sealed with.
pub struct SharedCache {
    pub client: Client,
    pub sealer: Sealer,
}

pub struct ResultCache {
    l1: moka::future::Cache<String, Arc<Entry>>,
    l2: Option<SharedCache>,
}

impl ResultCache {
    pub fn new(l2: Option<SharedCache>) -> Self {
        Self {
            l1: moka::future::Cache::builder()
                .max_capacity(L1_CAPACITY)
                .expire_after(PerEntryTtl)
                .build(),
            l2,
        }
    }

    fn redis_key(key: &str) -> String {
        format!("toolplane:cache:{key}")
    }

    /// Whether the in-process cache holds `key` (no Redis round trip): for ordering.
    pub fn holds(&self, key: &str) -> bool {
        self.l1.contains_key(key)
    }

    pub async fn get(&self, key: &str) -> Option<Value> {
        self.l1.get(key).await.map(|e| e.output.clone())
    }

    /// The cached output for `key`, or the output `fetch` produces (cached for `ttl`
    /// when it succeeds). A failure is shared with concurrent waiters, never cached.
    /// `valid` judges a value read back from Redis (the tool's output schema); one it
    /// refuses is a miss.
    pub async fn get_or_fetch<E, F>(
        &self,
        key: &str,
        ttl: Duration,
        valid: impl Fn(&Value) -> bool,
        fetch: F,
    ) -> Result<(Value, Source), Arc<E>>
    where
        E: Send + Sync + 'static,
        F: Future<Output = Result<Value, E>>,
    {
        let source = std::sync::Mutex::new(Source::Local);
        // The loader is boxed: moka keeps it inline in its own (already large) state.
        let loaded = self
            .l1
            .try_get_with(
                key.to_owned(),
                Box::pin(async {
                    if let Some((output, left)) = self.l2_get(key, &valid).await {
                        *source.lock().unwrap_or_else(|e| e.into_inner()) = Source::Shared;
                        // Never kept past the expiry it was sealed with.
                        let ttl = ttl.min(left);
                        return Ok(Arc::new(Entry { output, ttl }));
                    }
                    let output = fetch.await?;
                    *source.lock().unwrap_or_else(|e| e.into_inner()) = Source::Upstream;
                    self.l2_set(key, &output, ttl).await;
                    Ok(Arc::new(Entry { output, ttl }))
                }),
            )
            .await?;
        let source = *source.lock().unwrap_or_else(|e| e.into_inner());
        Ok((loaded.output.clone(), source))
    }

    /// A value from Redis and how long it has left, if it is sealed for `key` and
    /// `valid`.
    async fn l2_get(&self, key: &str, valid: impl Fn(&Value) -> bool) -> Option<(Value, Duration)> {
        let l2 = self.l2.as_ref()?;
        let redis_key = Self::redis_key(key);
        let got = tokio::time::timeout(REDIS_TIMEOUT, l2.client.get::<Option<String>, _>(&redis_key)).await;
        let Ok(Ok(Some(text))) = got else { return None };
        let now = now_ms();
        let reason = match l2.sealer.open(&redis_key, now, &text) {
            Ok((output, expires)) if valid(&output) => {
                let left = Duration::from_millis(u64::try_from(expires - now).unwrap_or(0));
                return Some((output, left));
            }
            Ok(_) => "schema",
            Err(refused) => refused.as_str(),
        };
        tracing::warn!(key = %redis_key, reason, "refused a result-cache value from Redis; calling the tool instead");
        metrics::counter!(m::CACHE_REJECTED, "reason" => reason).increment(1);
        None
    }

    async fn l2_set(&self, key: &str, output: &Value, ttl: Duration) {
        let Some(l2) = &self.l2 else { return };
        let ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
        let redis_key = Self::redis_key(key);
        let sealed = l2.sealer.seal(&redis_key, now_ms().saturating_add(ms), output);
        let set = l2
            .client
            .set::<(), _, _>(redis_key, sealed, Some(Expiration::PX(ms)), None, false);
        if let Ok(Err(e)) = tokio::time::timeout(REDIS_TIMEOUT, set).await {
            tracing::debug!(error = %e, "cannot write the shared cache");
        }
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::json;

    use super::*;

    #[tokio::test]
    async fn concurrent_misses_make_one_call_and_failures_are_not_cached() {
        let cache = Arc::new(ResultCache::new(None));
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (cache, calls) = (cache.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_fetch::<String, _>("k", Duration::from_secs(60), |_| true, async {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok(json!({"v": 1}))
                    })
                    .await
                    .unwrap()
            }));
        }
        let mut upstream = 0;
        for t in tasks {
            let (v, source) = t.await.unwrap();
            assert_eq!(v, json!({"v": 1}));
            upstream += usize::from(source == Source::Upstream);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(upstream, 1);
        assert_eq!(cache.get("k").await, Some(json!({"v": 1})));

        let err = cache
            .get_or_fetch::<String, _>("bad", Duration::from_secs(60), |_| true, async {
                Err("boom".to_owned())
            })
            .await;
        assert_eq!(*err.unwrap_err(), "boom");
        assert!(cache.get("bad").await.is_none());
    }

    #[tokio::test]
    async fn entries_expire_after_their_ttl() {
        let cache = ResultCache::new(None);
        cache
            .get_or_fetch::<String, _>("k", Duration::from_millis(50), |_| true, async { Ok(json!(1)) })
            .await
            .unwrap();
        assert!(cache.get("k").await.is_some());
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(cache.get("k").await.is_none());
    }
}
