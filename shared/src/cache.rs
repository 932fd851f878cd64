//! A small cache-aside map with a time-to-live, for routing lookups (channel account → tenant,
//! agent) that every message needs and that change rarely. Entries older than the TTL are
//! reloaded; an admin change is therefore visible within one TTL.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct TtlCache<K, V> {
    ttl: Duration,
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The cached value if it is fresh.
    pub fn get(&self, key: &K) -> Option<V> {
        let entries = crate::lock(&self.entries);
        entries
            .get(key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, v)| v.clone())
    }

    pub fn put(&self, key: K, value: V) {
        let mut entries = crate::lock(&self.entries);
        if entries.len() > 10_000 {
            let ttl = self.ttl;
            entries.retain(|_, (at, _)| at.elapsed() < ttl);
        }
        entries.insert(key, (Instant::now(), value));
    }

    /// Cache-aside: the fresh cached value, else `load()` (cached when it succeeds).
    pub async fn get_or_load<E, F, Fut>(&self, key: K, load: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<V, E>>,
    {
        if let Some(v) = self.get(&key) {
            return Ok(v);
        }
        let v = load().await?;
        self.put(key, v.clone());
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn loads_once_within_the_ttl_and_again_after_it() {
        let cache = TtlCache::new(Duration::from_millis(50));
        let loads = AtomicUsize::new(0);
        let load = || async {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ()>(loads.load(Ordering::SeqCst))
        };
        assert_eq!(cache.get_or_load("k", load).await, Ok(1));
        assert_eq!(
            cache.get_or_load("k", load).await,
            Ok(1),
            "served from cache"
        );
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(
            cache.get_or_load("k", load).await,
            Ok(2),
            "reloaded after the TTL"
        );
        let failing = || async { Err::<usize, _>("db down") };
        assert_eq!(cache.get_or_load("other", failing).await, Err("db down"));
        assert_eq!(cache.get(&"other"), None, "failures are not cached");
    }
}
