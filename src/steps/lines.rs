//! A priority queue kept in lines: one ordered line per class of what its entries ask for (an
//! agent kind and capabilities, say), so that finding the first entry someone can take costs
//! the number of classes, not the length of the queue. Used by the fleet's host queue
//! (`dispatch`) and the pull agents' board (`pull`).

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

use crate::workflow::Timestamp;

use super::task::Priority;

/// Queue order: higher priority first, then older, then lower id.
pub(super) type QueueKey = (Reverse<Priority>, Timestamp, u64);

/// The queue: entries by id, each in the line of its class, in [`QueueKey`] order.
#[derive(Debug)]
pub(super) struct Lines<C, V> {
    lines: HashMap<C, BTreeMap<QueueKey, V>>,
    at: HashMap<u64, (C, QueueKey)>,
}

impl<C, V> Default for Lines<C, V> {
    fn default() -> Self {
        Lines {
            lines: HashMap::new(),
            at: HashMap::new(),
        }
    }
}

impl<C: Hash + Eq + Clone, V> Lines<C, V> {
    /// Puts entry `id` in the line of `class` at `key`, replacing its earlier place.
    pub(super) fn insert(&mut self, id: u64, class: C, key: QueueKey, value: V) {
        self.remove(id);
        self.lines
            .entry(class.clone())
            .or_default()
            .insert(key, value);
        self.at.insert(id, (class, key));
    }

    /// Takes entry `id` out of its line; whether it was queued.
    pub(super) fn remove(&mut self, id: u64) -> bool {
        let Some((class, key)) = self.at.remove(&id) else {
            return false;
        };
        let Some(line) = self.lines.get_mut(&class) else {
            return false;
        };
        let removed = line.remove(&key).is_some();
        if line.is_empty() {
            self.lines.remove(&class);
        }
        removed
    }

    pub(super) fn get_mut(&mut self, id: u64) -> Option<&mut V> {
        let (class, key) = self.at.get(&id)?;
        self.lines.get_mut(class)?.get_mut(key)
    }

    /// Entries queued.
    pub(super) fn len(&self) -> usize {
        self.at.len()
    }

    /// Each class and its line, in queue order within the line.
    pub(super) fn lines(&self) -> impl Iterator<Item = (&C, &BTreeMap<QueueKey, V>)> {
        self.lines.iter()
    }
}

/// A list of capabilities as a class compares them: sorted, without repeats.
pub(super) fn capability_set(capabilities: &[String]) -> Vec<String> {
    let mut set = capabilities.to_vec();
    set.sort();
    set.dedup();
    set
}
