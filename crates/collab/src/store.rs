//! What a member holds for others to fetch: the updates of the last rounds by hash, and the
//! weights-and-momentum blobs that rounds start from, by manifest id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use odin_proto::train::{Manifest, Update};

/// Content-addressed blobs, shared between the round driver and the stream server.
#[derive(Default)]
pub struct Store {
    updates: HashMap<[u8; 32], (u64, Arc<Update>)>,
    states: HashMap<[u8; 32], (Manifest, Arc<Vec<u8>>)>,
}

/// A [`Store`] behind a lock, as both tasks share it.
pub type Shared = Arc<Mutex<Store>>;

impl Store {
    /// Hold `u` (of `round`) under its hash.
    pub fn put_update(&mut self, round: u64, hash: [u8; 32], u: Arc<Update>) {
        self.updates.insert(hash, (round, u));
    }

    /// The update with `hash`, if held.
    pub fn update(&self, hash: &[u8; 32]) -> Option<(u64, Arc<Update>)> {
        self.updates.get(hash).cloned()
    }

    /// Hold a state blob under its manifest's id.
    pub fn put_state(&mut self, m: Manifest, blob: Arc<Vec<u8>>) -> [u8; 32] {
        let id = m.id();
        self.states.insert(id, (m, blob));
        id
    }

    /// The manifest with `id`, if held.
    pub fn manifest(&self, id: &[u8; 32]) -> Option<Manifest> {
        self.states.get(id).map(|(m, _)| m.clone())
    }

    /// Chunk `i` of the blob with manifest `id`.
    pub fn chunk(&self, id: &[u8; 32], i: usize) -> Option<Vec<u8>> {
        let (m, blob) = self.states.get(id)?;
        let start = i.checked_mul(m.chunk_size as usize)?;
        let len = m.chunk_len(i);
        (len > 0).then(|| blob[start..start + len].to_vec())
    }

    /// Drop updates and states of rounds before `round` (a late joiner fetches the newest).
    pub fn prune(&mut self, round: u64) {
        self.updates.retain(|_, (r, _)| *r >= round);
        self.states.retain(|_, (m, _)| m.round >= round);
    }
}

/// Bytes this member sent and received for the run: update and chunk frames on streams, and
/// the gossip it published (gossipsub's forwarding of others' messages is not counted).
#[derive(Default, Debug)]
pub struct Traffic {
    /// Bytes sent.
    pub sent: AtomicU64,
    /// Bytes received.
    pub received: AtomicU64,
}

impl Traffic {
    /// Count `n` bytes sent.
    pub fn sent(&self, n: usize) {
        self.sent.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Count `n` bytes received.
    pub fn received(&self, n: usize) {
        self.received.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// (sent, received) so far.
    pub fn totals(&self) -> (u64, u64) {
        (self.sent.load(Ordering::Relaxed), self.received.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_blob_and_pruning_drops_old_rounds() {
        let blob: Vec<u8> = (0..80u8).collect();
        let m = Manifest::of(3, 10, 32, &blob);
        let mut s = Store::default();
        let id = s.put_state(m, Arc::new(blob.clone()));
        let got: Vec<u8> = (0..3).flat_map(|i| s.chunk(&id, i).unwrap()).collect();
        assert_eq!(got, blob);
        assert!(s.chunk(&id, 3).is_none());
        assert!(s.chunk(&id, usize::MAX).is_none());
        let u = Arc::new(Update::quantize(4, None, &[1.0; 4]));
        s.put_update(2, u.hash(), u.clone());
        assert!(s.update(&u.hash()).is_some());
        s.prune(3);
        assert!(s.update(&u.hash()).is_none());
        assert!(s.manifest(&id).is_some());
        s.prune(4);
        assert!(s.manifest(&id).is_none());
    }
}
