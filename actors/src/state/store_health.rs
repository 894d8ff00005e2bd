//! The store's trouble as the leader knows it, in memory (when etcd is out of space
//! nothing can be written about it): set by `leader::maintenance`, shown by the API
//! as a condition of the leader's control-plane nodes.

use std::sync::{Arc, Mutex, PoisonError};

/// `None` while all is well; clones share it.
#[derive(Clone, Debug, Default)]
pub struct StoreHealth(Arc<Mutex<Option<String>>>);

impl StoreHealth {
    pub fn set(&self, trouble: Option<String>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = trouble;
    }

    pub fn trouble(&self) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
