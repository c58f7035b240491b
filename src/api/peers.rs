//! Concurrent requests per peer address: a bounded number in flight per IP, so one misbehaving
//! client (or a flood of connections from it) cannot take every worker from the others.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// In-flight calls per peer address, with a cap.
#[derive(Debug)]
pub struct PeerLimiter {
    max: usize,
    inflight: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted call; releases its slot when dropped.
#[derive(Debug)]
pub struct PeerPermit {
    limiter: Arc<PeerLimiter>,
    peer: IpAddr,
}

impl PeerLimiter {
    /// A limiter admitting `max` concurrent calls per address.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            inflight: Mutex::new(HashMap::new()),
        })
    }

    /// Admits one more call from `peer`, or `None` when it already has `max` in flight.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<PeerPermit> {
        let mut inflight = self.inflight.lock().ok()?;
        let count = inflight.entry(peer).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(PeerPermit {
            limiter: Arc::clone(self),
            peer,
        })
    }
}

impl Drop for PeerPermit {
    fn drop(&mut self) {
        if let Ok(mut inflight) = self.limiter.inflight.lock()
            && let Some(count) = inflight.get_mut(&self.peer)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                inflight.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_per_peer_and_come_back() {
        let limiter = PeerLimiter::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = limiter.admit(a).unwrap();
        let _second = limiter.admit(a).unwrap();
        assert!(limiter.admit(a).is_none());
        assert!(limiter.admit(b).is_some());
        drop(first);
        assert!(limiter.admit(a).is_some());
    }
}
