//! Session-slot counters: how many live sessions each route has in this
//! worker, with a ceiling per acquisition.
//!
//! A slot is held by a [`SlotGuard`]. Releasing is idempotent and dropping
//! the guard releases it too, so every path that ends a session (normal end,
//! the log phase, garbage collection of a forgotten guard) can release
//! without counting twice.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// Live-session counts keyed by route.
#[derive(Default)]
pub struct SlotRegistry {
    counts: Mutex<HashMap<Arc<str>, usize>>,
}

impl SlotRegistry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Takes a slot of `route` if fewer than `max` are held, else `None`.
    pub fn try_acquire(self: &Arc<Self>, route: &str, max: usize) -> Option<SlotGuard> {
        let mut counts = self.counts.lock();
        let key = match counts.get_key_value(route) {
            Some((key, &held)) if held >= max => {
                let _ = key;
                return None;
            }
            Some((key, _)) => Arc::clone(key),
            None if max == 0 => return None,
            None => Arc::from(route),
        };
        *counts.entry(Arc::clone(&key)).or_insert(0) += 1;
        Some(SlotGuard { registry: Arc::clone(self), route: key, released: false })
    }

    /// Slots of `route` held right now.
    pub fn count(&self, route: &str) -> usize {
        self.counts.lock().get(route).copied().unwrap_or(0)
    }

    /// Every route with at least one held slot.
    pub fn snapshot(&self) -> Vec<(String, usize)> {
        let mut all: Vec<_> = self.counts.lock().iter().map(|(k, &v)| (k.to_string(), v)).collect();
        all.sort();
        all
    }

    fn give_back(&self, route: &str) {
        let mut counts = self.counts.lock();
        if let Some(held) = counts.get_mut(route) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                // Routes come and go (APISIX route ids); keep the map small.
                counts.remove(route);
            }
        }
    }
}

/// One held slot. Released by [`SlotGuard::release`] or on drop.
pub struct SlotGuard {
    registry: Arc<SlotRegistry>,
    route: Arc<str>,
    released: bool,
}

impl SlotGuard {
    /// Gives the slot back. Returns `true` the first time, `false` after.
    pub fn release(&mut self) -> bool {
        if self.released {
            return false;
        }
        self.released = true;
        self.registry.give_back(&self.route);
        true
    }

    pub fn is_released(&self) -> bool {
        self.released
    }

    pub fn route(&self) -> &str {
        &self.route
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_is_enforced_per_route() {
        let slots = SlotRegistry::new();
        let a1 = slots.try_acquire("a", 2).expect("first slot of a");
        let _a2 = slots.try_acquire("a", 2).expect("second slot of a");
        assert!(slots.try_acquire("a", 2).is_none(), "third slot of a over a ceiling of 2");
        let _b1 = slots.try_acquire("b", 1).expect("route b counts on its own");
        assert_eq!((slots.count("a"), slots.count("b")), (2, 1));
        drop(a1);
        assert!(slots.try_acquire("a", 2).is_some(), "a slot freed by drop is available again");
    }

    #[test]
    fn release_is_idempotent_and_drop_after_release_does_not_count_twice() {
        let slots = SlotRegistry::new();
        let mut g = slots.try_acquire("r", 5).expect("slot");
        let _other = slots.try_acquire("r", 5).expect("slot");
        assert!(g.release());
        assert!(!g.release());
        assert!(g.is_released());
        drop(g);
        assert_eq!(slots.count("r"), 1, "only the first release counted");
    }

    #[test]
    fn zero_ceiling_admits_nothing_and_empty_routes_are_forgotten() {
        let slots = SlotRegistry::new();
        assert!(slots.try_acquire("r", 0).is_none());
        let g = slots.try_acquire("r", 1).expect("slot");
        assert_eq!(slots.snapshot(), vec![("r".to_string(), 1)]);
        drop(g);
        assert!(slots.snapshot().is_empty());
    }
}
