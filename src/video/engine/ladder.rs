//! The ladder stage: a thread between the decoder and the rendition threads
//! that scales each decoded frame into every rendition's size in one step,
//! for backends that offer it (one GPU kernel launch writes the whole
//! ladder). On its own thread so that decoding the next frame overlaps
//! scaling this one.

use std::sync::mpsc::Receiver;

use super::fan_out::{Inboxes, Picture};
use super::Stop;
use crate::video::backend::{Frame, Ladder, LadderScaler};
use crate::video::{VideoError, VideoProfile};

/// Decoded frames waiting for the ladder stage. Two let the decoder work one
/// frame ahead; more would only hold decoded frames (GPU memory) longer.
pub(super) const LADDER_QUEUE: usize = 2;

/// Scales every frame from `frames` with `scaler` and hands each rendition
/// its copy, until the decoder is done or the run stops.
pub(super) fn run(
    scaler: Box<dyn LadderScaler>,
    profiles: &[VideoProfile],
    frames: Receiver<(u64, Frame)>,
    mut inboxes: Inboxes,
    stop: &Stop<'_>,
) -> Result<(), VideoError> {
    let result = scale_all(scaler, profiles, frames, &mut inboxes, stop);
    // Before the inboxes close: a rendition that sees its input end must
    // find the run failed, not flush a segment cut short.
    stop.fail_if(&result);
    result
}

fn scale_all(
    mut scaler: Box<dyn LadderScaler>,
    profiles: &[VideoProfile],
    frames: Receiver<(u64, Frame)>,
    inboxes: &mut Inboxes,
    stop: &Stop<'_>,
) -> Result<(), VideoError> {
    // Worked out at the first frame, as each rendition thread does: a
    // segment keeps its renditions' sizes when its resolution changes.
    // Scaled pictures carry that first size, so that a rendition whose
    // first shown picture comes later sizes itself the same.
    let mut first_size = None;
    let mut sizes = Vec::new();
    for (index, frame) in frames {
        stop.check()?;
        let first_size = *first_size.get_or_insert_with(|| {
            sizes = profiles
                .iter()
                .map(|p| p.output_size(frame.width, frame.height))
                .collect();
            (frame.width, frame.height)
        });
        let pts = frame.pts;
        match scaler.scale(frame, &sizes)? {
            Ladder::Scaled(scaled) => {
                check_ladder(&sizes, &scaled)?;
                inboxes.send(
                    scaled
                        .into_iter()
                        .map(|out| Picture::scaled(index, pts, first_size, out)),
                )?;
            }
            // Each rendition scales it, as without a ladder stage.
            Ladder::Declined(frame) => inboxes.share(index, frame)?,
        }
    }
    Ok(())
}

/// A ladder scaler's answer must be one frame per size, in order: the
/// encoders were opened at those sizes.
fn check_ladder(sizes: &[(u32, u32)], scaled: &[Frame]) -> Result<(), VideoError> {
    let got: Vec<_> = scaled.iter().map(|f| (f.width, f.height)).collect();
    if got != sizes {
        return Err(VideoError::Contract(format!(
            "the ladder scaler made {got:?} for {sizes:?}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(width: u32, height: u32) -> Frame {
        crate::video::init_ffmpeg();
        Frame::host(
            ffmpeg_next::frame::Video::new(ffmpeg_next::format::Pixel::YUV420P, width, height),
            0,
        )
    }

    #[test]
    fn a_ladder_of_other_sizes_or_count_is_refused() {
        let sizes = [(64, 36), (32, 18)];
        assert!(check_ladder(&sizes, &[host(64, 36), host(32, 18)]).is_ok());
        for wrong in [
            vec![host(64, 36)],
            vec![host(32, 18), host(64, 36)],
            vec![host(64, 36), host(32, 18), host(32, 18)],
        ] {
            let err = check_ladder(&sizes, &wrong).unwrap_err();
            assert!(matches!(err, VideoError::Contract(_)), "{err}");
            assert!(!err.is_bad_input());
        }
    }
}
