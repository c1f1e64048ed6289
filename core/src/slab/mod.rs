//! The slab: size-classed blocks in slab pages, carved from segments, owned by per-thread heaps.
//!
//! ```text
//!  segment (4 MiB, 4 MiB-aligned, from the page source)
//!  ┌────────────┬──────────┬──────────┬─────────────────────┬───
//!  │ slice 0:   │ slice 1  │ slice 2  │ slices 3..=4        │ …     64 slices of 64 KiB
//!  │ header:    │ page of  │ page of  │ one page of 16 KiB  │
//!  │ slice map, │ 32 B     │ 48 B     │ blocks (8 blocks    │
//!  │ page descs;│ blocks   │ blocks   │ need 2 slices)      │
//!  │ metadata   │          │          │                     │
//!  └────────────┴──────────┴──────────┴─────────────────────┴───
//! ```
//!
//! * [`segment`]: the page heap — segments, spans of slices, commit/purge accounting.
//! * [`page`]: one slab page — its two free lists, carving, collecting.
//! * [`remote`]: the atomic remote-free list (the only structure other threads write).
//! * [`heap`]: per-thread heaps — the fast paths, page queues, retiring, remote frees.
//! * [`abandon`]: pages whose thread exited, and the pool of heaps.
//! * [`segmap`]: which addresses are slab segments, for frees without a size.
//!
//! Pointer → page is O(1): mask the address down to its segment, index the segment's slice map.

pub(crate) mod abandon;
mod check;
pub(crate) mod fit;
pub(crate) mod heap;
pub(crate) mod page;
pub(crate) mod remote;
pub(crate) mod segmap;
pub(crate) mod segment;

pub(crate) use abandon::MAX_VACANT;
pub(crate) use segment::{META_MAX, PURGE_SLACK};

/// log2 of the segment size.
pub const SEGMENT_SHIFT: usize = 22;
/// Segment size and alignment: 4 MiB.
pub const SEGMENT_SIZE: usize = 1 << SEGMENT_SHIFT;
/// Mask of the offset inside a segment.
pub const SEGMENT_MASK: usize = SEGMENT_SIZE - 1;
/// log2 of the slice size.
pub const SLICE_SHIFT: usize = 16;
/// Slice size: the unit the page heap hands out, 64 KiB.
pub const SLICE_SIZE: usize = 1 << SLICE_SHIFT;
/// Slices per segment; slice 0 holds the header.
pub const SLICES: usize = SEGMENT_SIZE / SLICE_SIZE;
