//! Data plugins share within one scheduling cycle (upstream's `CycleState`).

use std::any::Any;
use std::collections::HashMap;

/// Typed values keyed by a plugin's name, written in PreFilter/PreScore and read later in
/// the same cycle. A new one is made for every cycle.
#[derive(Default)]
pub struct CycleState {
    data: HashMap<&'static str, Box<dyn Any + Send + Sync>>,
}

impl CycleState {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn write<T: Any + Send + Sync>(&mut self, key: &'static str, value: T) {
        self.data.insert(key, Box::new(value));
    }

    /// The value under `key` if there is one of type `T`.
    pub fn read<T: Any + Send + Sync>(&self, key: &'static str) -> Option<&T> {
        self.data.get(key).and_then(|v| v.downcast_ref())
    }

    /// Drops the value under `key`, if any.
    pub fn remove(&mut self, key: &'static str) {
        self.data.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_what_was_written_with_its_type() {
        let mut s = CycleState::new();
        s.write("a", 5u32);
        assert_eq!(s.read::<u32>("a"), Some(&5));
        assert_eq!(s.read::<i64>("a"), None);
        assert_eq!(s.read::<u32>("b"), None);
        s.remove("a");
        assert_eq!(s.read::<u32>("a"), None);
    }
}
