//! How decoded pictures reach the rendition threads: either the decoded
//! frame itself, shared by every rendition (each scales it), or each
//! rendition's own copy already scaled by the ladder stage.

use std::cell::Cell;
use std::sync::mpsc::SyncSender;
use std::sync::Arc;

use crate::video::backend::Frame;
use crate::video::VideoError;

/// What one rendition thread gets for one decoded picture.
pub(super) struct Picture {
    /// The picture's number in the segment. Frame-rate conversion shows a
    /// picture more than once; a repeat is recognised by its number and not
    /// scaled again.
    pub index: u64,
    pub pts: i64,
    /// The decoded size, from which the rendition's size is worked out.
    pub source_size: (u32, u32),
    pub content: Content,
}

pub(super) enum Content {
    /// The decoded frame, shared by every rendition.
    Decoded(Arc<Frame>),
    /// This rendition's own copy, scaled by the ladder stage. Taken out at
    /// its first showing: the frame-rate converter lends a picture only by
    /// reference, and the rendition keeps the frame it last showed.
    Scaled(Cell<Option<Frame>>),
}

impl Picture {
    pub fn decoded(index: u64, frame: Arc<Frame>) -> Picture {
        Picture {
            index,
            pts: frame.pts,
            source_size: (frame.width, frame.height),
            content: Content::Decoded(frame),
        }
    }

    pub fn scaled(index: u64, pts: i64, source_size: (u32, u32), scaled: Frame) -> Picture {
        Picture {
            index,
            pts,
            source_size,
            content: Content::Scaled(Cell::new(Some(scaled))),
        }
    }
}

/// The rendition threads' inboxes, in profile order. A closed inbox is a
/// rendition that gave up; its error is collected when its thread is joined.
pub(super) struct Inboxes(Vec<Option<SyncSender<Picture>>>);

impl Inboxes {
    pub fn new(senders: Vec<SyncSender<Picture>>) -> Inboxes {
        Inboxes(senders.into_iter().map(Some).collect())
    }

    /// Sends rendition `i` the `i`-th picture (blocking while its queue is
    /// full). Fails with [`VideoError::Cancelled`] once every rendition
    /// gave up: nobody is left to decode or scale for.
    pub fn send(&mut self, pictures: impl IntoIterator<Item = Picture>) -> Result<(), VideoError> {
        for (slot, picture) in self.0.iter_mut().zip(pictures) {
            if let Some(tx) = slot {
                if tx.send(picture).is_err() {
                    *slot = None;
                }
            }
        }
        if self.0.iter().all(Option::is_none) {
            return Err(VideoError::Cancelled);
        }
        Ok(())
    }

    /// Sends every rendition the same decoded frame.
    pub fn share(&mut self, index: u64, frame: Frame) -> Result<(), VideoError> {
        let frame = Arc::new(frame);
        let count = self.0.len();
        self.send((0..count).map(|_| Picture::decoded(index, Arc::clone(&frame))))
    }
}
