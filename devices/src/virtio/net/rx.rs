//! The receive path (§5.1.6.3, §5.1.6.4): one header + frame from the
//! backend goes into the driver's receive buffers.
//!
//! - Without `VIRTIO_NET_F_MRG_RXBUF`, one descriptor chain holds the whole
//!   frame and `num_buffers` is 1. A chain too small for the frame is left
//!   on the queue and the frame dropped (§5.1.6.3.1 leaves the choice to the
//!   device; a driver that negotiated no merging posts buffers for the
//!   largest frame it accepts).
//! - With it, the frame is spread over as many chains as it takes,
//!   `num_buffers` says how many, and the chains are published on the used
//!   ring with one update of the used index.
//!
//! A chain that the device cannot write (outside memory, no writable
//! descriptor, the first one shorter than the header) is returned with
//! length 0 and counted. When the queue runs out of chains before a frame
//! is placed, the chains taken are put back and the frame waits for the
//! driver to post more ([`Delivery::NoBuffers`]).

use std::io::Write;

use virtio_queue::{Queue, QueueT, Writer};

use super::{NUM_BUFFERS_OFFSET, VNET_HDR_LEN};
use crate::virtio::queue::{self, QueueError};
use crate::virtio::GuestMemory;

/// What happened to one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Placed in this many chains.
    Delivered(u16),
    /// The queue has no (or not enough) chains; the frame is kept.
    NoBuffers,
    /// Dropped: it cannot fit the driver's buffers.
    TooBig,
    /// Dropped: an unusable chain came in the middle of a merged frame
    /// (the chains taken for it are returned with length 0).
    BadChain,
}

/// The result of [`deliver`]: the frame's fate and the unusable chains
/// met on the way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The frame.
    pub delivery: Delivery,
    /// Chains returned with length 0 because they were unusable.
    pub bad_chains: u32,
}

/// Puts `frame` (header + frame, at least [`VNET_HDR_LEN`] bytes) into
/// `queue`'s chains; sets `num_buffers` in its header.
pub fn deliver(
    queue: &mut Queue,
    mem: &GuestMemory,
    frame: &mut [u8],
    mergeable: bool,
) -> Result<Outcome, QueueError> {
    if mergeable {
        deliver_merged(queue, mem, frame)
    } else {
        deliver_one(queue, mem, frame)
    }
}

/// A chain's writer if the device can put at least `min` bytes in it.
fn writer<'a>(mem: &'a GuestMemory, chain: queue::Chain<'a>, min: usize) -> Option<Writer<'a>> {
    match Writer::new(mem, chain) {
        Ok(w) if w.available_bytes() >= min.max(1) => Some(w),
        Ok(_) => None,
        Err(e) => {
            tracing::debug!("virtio-net: unusable RX chain: {e}");
            None
        }
    }
}

fn deliver_one(
    queue: &mut Queue,
    mem: &GuestMemory,
    frame: &mut [u8],
) -> Result<Outcome, QueueError> {
    let mut bad_chains = 0;
    // Each round consumes one chain; a ring holds at most `size` of them.
    for _ in 0..queue.size() {
        let Some(chain) = queue::pop(queue, mem)? else {
            break;
        };
        let head = chain.head_index();
        let Some(mut w) = writer(mem, chain, VNET_HDR_LEN) else {
            queue::add_used(queue, mem, head, 0)?;
            bad_chains += 1;
            continue;
        };
        if w.available_bytes() < frame.len() {
            queue::undo_pop(queue);
            return Ok(Outcome {
                delivery: Delivery::TooBig,
                bad_chains,
            });
        }
        frame[NUM_BUFFERS_OFFSET..VNET_HDR_LEN].copy_from_slice(&1u16.to_le_bytes());
        let written = match w.write_all(frame) {
            Ok(()) => frame.len(),
            Err(e) => {
                tracing::debug!("virtio-net: RX write: {e}");
                w.bytes_written()
            }
        };
        queue::add_used(queue, mem, head, written as u32)?;
        return Ok(Outcome {
            delivery: Delivery::Delivered(1),
            bad_chains,
        });
    }
    Ok(Outcome {
        delivery: Delivery::NoBuffers,
        bad_chains,
    })
}

fn deliver_merged(
    queue: &mut Queue,
    mem: &GuestMemory,
    frame: &mut [u8],
) -> Result<Outcome, QueueError> {
    let size = queue.size();
    let mut bad_chains = 0;
    let mut taken: Vec<(u16, Writer<'_>)> = Vec::new();
    let mut capacity = 0usize;
    let mut rounds = 0u16;
    while capacity < frame.len() {
        if rounds == size {
            // Every chain of the ring together is too small.
            for _ in 0..taken.len() {
                queue::undo_pop(queue);
            }
            return Ok(Outcome {
                delivery: Delivery::TooBig,
                bad_chains,
            });
        }
        rounds += 1;
        let Some(chain) = queue::pop(queue, mem)? else {
            for _ in 0..taken.len() {
                queue::undo_pop(queue);
            }
            return Ok(Outcome {
                delivery: Delivery::NoBuffers,
                bad_chains,
            });
        };
        let head = chain.head_index();
        // The first buffer holds at least the whole header (§5.1.6.3.1).
        let min = if taken.is_empty() { VNET_HDR_LEN } else { 1 };
        match writer(mem, chain, min) {
            Some(w) => {
                capacity = capacity.saturating_add(w.available_bytes());
                taken.push((head, w));
            }
            None if taken.is_empty() => {
                queue::add_used(queue, mem, head, 0)?;
                bad_chains += 1;
            }
            None => {
                // Chains taken before it cannot be put back without it:
                // return them all unused.
                let mut used: Vec<(u16, u32)> = taken.iter().map(|(h, _)| (*h, 0)).collect();
                used.push((head, 0));
                queue::add_used_many(queue, mem, &used)?;
                return Ok(Outcome {
                    delivery: Delivery::BadChain,
                    bad_chains: bad_chains + 1,
                });
            }
        }
    }
    let count = taken.len() as u16;
    frame[NUM_BUFFERS_OFFSET..VNET_HDR_LEN].copy_from_slice(&count.to_le_bytes());
    let mut used = Vec::with_capacity(taken.len());
    let mut offset = 0;
    for (head, mut w) in taken {
        let n = w.available_bytes().min(frame.len() - offset);
        if let Err(e) = w.write_all(&frame[offset..offset + n]) {
            tracing::debug!("virtio-net: RX write: {e}");
        }
        used.push((head, w.bytes_written() as u32));
        offset += n;
    }
    queue::add_used_many(queue, mem, &used)?;
    Ok(Outcome {
        delivery: Delivery::Delivered(count),
        bad_chains,
    })
}
