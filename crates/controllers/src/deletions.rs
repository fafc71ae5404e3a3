//! Deletions seen by the garbage collector's watches, passed on to other controllers.
//!
//! The garbage collector watches the metadata of every served resource. Upstream's quota
//! controller replenishes quota from the same watches (its monitors share the collector's
//! informers), rather than opening a second watch of every resource: each created ConfigMap or
//! Secret would otherwise be sent, encoded and decoded twice more. Here the collector publishes
//! each deletion it sees, including those it learns of by relisting after a broken watch.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

/// An object the garbage collector saw deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deleted {
    /// The API group of its resource (empty for the core group).
    pub group: String,
    /// Its resource, plural (`configmaps`).
    pub resource: String,
    /// Its namespace; empty for a cluster-scoped object.
    pub namespace: String,
}

/// Where deletions are published; cheap to clone, each clone publishes to every subscriber.
#[derive(Clone, Default)]
pub struct DeletionFeed {
    subscribers: Arc<Mutex<Vec<mpsc::UnboundedSender<Deleted>>>>,
}

impl DeletionFeed {
    /// Every deletion published from now on, until the receiver is dropped.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<Deleted> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.subscribers.lock().unwrap_or_else(|e| e.into_inner()).push(tx);
        rx
    }

    pub fn publish(&self, deleted: Deleted) {
        let mut subscribers = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        subscribers.retain(|s| s.send(deleted.clone()).is_ok());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deleted(resource: &str) -> Deleted {
        Deleted { group: String::new(), resource: resource.into(), namespace: "ns".into() }
    }

    #[test]
    fn every_subscriber_gets_what_is_published_after_it_subscribed() {
        let feed = DeletionFeed::default();
        feed.publish(deleted("early"));
        let mut first = feed.subscribe();
        let mut second = feed.clone().subscribe();
        feed.publish(deleted("configmaps"));
        assert_eq!(first.try_recv().unwrap(), deleted("configmaps"));
        assert_eq!(second.try_recv().unwrap(), deleted("configmaps"));
        assert!(first.try_recv().is_err(), "a deletion published before subscribing was delivered");
        // A dropped subscriber is forgotten; the others still get theirs.
        drop(first);
        feed.publish(deleted("secrets"));
        assert_eq!(second.try_recv().unwrap(), deleted("secrets"));
        assert_eq!(feed.subscribers.lock().unwrap().len(), 1);
    }
}
