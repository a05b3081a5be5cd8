//! The orchestrator's in-memory object store for renditions, served at
//! `/stream/<session>/<profile>/<seq>.<ext>` as go-livepeer serves them,
//! bounded in bytes (oldest first out).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;

pub struct MediaStore {
    inner: Mutex<Inner>,
    max_bytes: usize,
}

struct Inner {
    objects: HashMap<String, (Bytes, &'static str)>,
    order: VecDeque<String>,
    bytes: usize,
}

impl MediaStore {
    pub fn new(max_bytes: usize) -> Self {
        MediaStore {
            inner: Mutex::new(Inner {
                objects: HashMap::new(),
                order: VecDeque::new(),
                bytes: 0,
            }),
            max_bytes,
        }
    }

    pub fn put(&self, path: String, data: Bytes, mime: &'static str) {
        let mut inner = self.inner.lock().expect("media store lock");
        inner.bytes += data.len();
        if let Some((old, _)) = inner.objects.insert(path.clone(), (data, mime)) {
            inner.bytes -= old.len();
        } else {
            inner.order.push_back(path);
        }
        while inner.bytes > self.max_bytes {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            if let Some((d, _)) = inner.objects.remove(&oldest) {
                inner.bytes -= d.len();
            }
        }
    }

    pub fn get(&self, path: &str) -> Option<(Bytes, &'static str)> {
        self.inner
            .lock()
            .expect("media store lock")
            .objects
            .get(path)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_oldest_first() {
        let s = MediaStore::new(10);
        s.put("a".into(), Bytes::from_static(b"12345"), "video/mp2t");
        s.put("b".into(), Bytes::from_static(b"12345"), "video/mp2t");
        assert!(s.get("a").is_some());
        s.put("c".into(), Bytes::from_static(b"1"), "video/mp2t");
        assert!(s.get("a").is_none() && s.get("b").is_some() && s.get("c").is_some());
    }
}
