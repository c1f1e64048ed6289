//! Size classes: 8 B, then 16-byte steps up to 128 B, then eight classes per doubling (12.5 %
//! apart at the start of each doubling, at most 12.5 % internal waste) up to [`SLAB_MAX`].
//!
//! Every class above the first is a multiple of 16, so its blocks are 16-byte aligned (slab
//! pages start on a slice boundary); the 8-byte class is 8-byte aligned — what C's `malloc`
//! promises an object of at most 8 bytes (C17's alignment for objects that fit the size, as
//! mimalloc, jemalloc and tcmalloc give it), and half the cache lines of a 16-byte block for
//! the smallest and most frequent requests (half of glibc's malloc-thread benchmark). A request
//! with `align ≤ 8` therefore needs only its size to pick a class — the fast path's one table
//! lookup; one with `align` 16 takes the first class of at least 16 bytes. Larger alignments
//! pick the first class whose natural alignment (the lowest set bit of its size) is enough, or
//! go to vmap.

/// Alignment every slab block has, and the largest alignment the fast path serves by size
/// alone. Blocks of more than [`TINY_MAX`] bytes are 16-byte aligned.
pub const MIN_ALIGN: usize = 8;
/// The largest size of the 8-byte-aligned class; every larger class is 16-byte aligned.
pub const TINY_MAX: usize = 8;
/// Largest size served by the table lookup on the fast path.
pub const SMALL_MAX: usize = 1024;
/// Largest size served by the slab; larger requests go to vmap.
pub const SLAB_MAX: usize = 64 * 1024;
/// Number of size classes.
pub const NUM_CLASSES: usize = 81;
/// 8-byte granules of the small sizes, `0 ..= SMALL_MAX / 8` (the fast path's index).
pub const SMALL_GRANULES: usize = SMALL_MAX / 8 + 1;

/// Class sizes, in bytes.
pub static CLASS_SIZE: [u32; NUM_CLASSES] = {
    let mut t = [0u32; NUM_CLASSES];
    let mut c = 0;
    while c < NUM_CLASSES {
        t[c] = class_size_const(c) as u32;
        c += 1;
    }
    t
};

/// Size → class for sizes up to [`SMALL_MAX`], indexed by `(size + 7) / 8`.
static SMALL_CLASS: [u8; SMALL_GRANULES] = {
    let mut t = [0u8; SMALL_GRANULES];
    let mut i = 1;
    while i < t.len() {
        t[i] = class_of_const(i * 8) as u8;
        i += 1;
    }
    t
};

const fn class_size_const(c: usize) -> usize {
    if c == 0 {
        TINY_MAX
    } else if c <= 8 {
        c * 16
    } else {
        let group = (c - 9) / 8;
        let step = (c - 9) % 8;
        let k = 7 + group;
        (1 << k) + (step + 1) * (1 << (k - 3))
    }
}

const fn class_of_const(size: usize) -> usize {
    if size <= TINY_MAX {
        0
    } else if size <= 128 {
        size.div_ceil(16)
    } else {
        let s = size - 1;
        let k = (usize::BITS - 1 - s.leading_zeros()) as usize; // floor(log2(s)) ≥ 7
        let step = (s >> (k - 3)) & 7;
        9 + (k - 7) * 8 + step
    }
}

/// The class of a size `1 ..= SMALL_MAX`: one table load.
#[inline(always)]
pub fn small_class(size: usize) -> usize {
    debug_assert!(size <= SMALL_MAX);
    SMALL_CLASS[(size + 7) >> 3] as usize
}

/// The class of a size `1 ..= SLAB_MAX`.
#[inline]
pub fn class_of(size: usize) -> usize {
    debug_assert!(size <= SLAB_MAX);
    if size <= SMALL_MAX {
        small_class(size)
    } else {
        class_of_const(size)
    }
}

/// The size of class `class`.
#[inline(always)]
pub fn class_size(class: usize) -> usize {
    CLASS_SIZE[class] as usize
}

/// The alignment every block of `class` has: the lowest set bit of its size, at most a slice.
#[inline]
pub fn class_align(class: usize) -> usize {
    let s = class_size(class);
    (1usize << s.trailing_zeros()).min(crate::slab::SLICE_SIZE)
}

/// The slab class that serves `(size, align)`, or `None` when the request belongs to vmap.
///
/// ```
/// use ctxalloc_core::size_class::{class_for, class_size};
/// let c = class_for(100, 64).unwrap();
/// assert!(class_size(c) >= 100 && class_size(c) % 64 == 0);
/// assert_eq!(class_for(1 << 20, 8), None);
/// ```
#[inline]
pub fn class_for(size: usize, align: usize) -> Option<usize> {
    if align <= MIN_ALIGN {
        if size <= SLAB_MAX {
            return Some(class_of(size.max(1)));
        }
        return None;
    }
    let need = size.max(align);
    if need > SLAB_MAX {
        return None;
    }
    let mut c = class_of(need);
    while class_align(c) < align {
        c += 1;
        if c == NUM_CLASSES {
            return None;
        }
    }
    Some(c)
}

/// How many slices a slab page of `class` spans: enough for at least 8 blocks.
#[inline]
pub fn class_slices(class: usize) -> usize {
    let bytes = class_size(class) * 8;
    let slices = bytes.div_ceil(crate::slab::SLICE_SIZE);
    slices.next_power_of_two()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_tight_and_ordered() {
        assert_eq!(class_size(0), TINY_MAX);
        assert_eq!(class_align(0), MIN_ALIGN);
        assert_eq!(class_size(NUM_CLASSES - 1), SLAB_MAX);
        for c in 1..NUM_CLASSES {
            assert!(class_size(c) > class_size(c - 1));
            assert_eq!(class_size(c) % 16, 0, "every class above the first is 16-byte aligned");
            if class_size(c) > 128 {
                let waste = (class_size(c) - class_size(c - 1)) as f64 / class_size(c - 1) as f64;
                assert!(waste <= 0.125 + 1e-9, "class {c}: {waste}");
            }
        }
    }

    #[test]
    fn every_size_maps_to_the_smallest_fitting_class() {
        let step = if cfg!(miri) { 97 } else { 1 };
        for size in (1..=SLAB_MAX).step_by(step) {
            let c = class_of(size);
            assert!(class_size(c) >= size, "size {size}");
            assert!(c == 0 || class_size(c - 1) < size, "size {size}");
        }
    }

    #[test]
    fn aligned_classes_are_aligned() {
        let mut align = 16;
        while align <= SLAB_MAX {
            for size in [1, 17, 100, 1000, 4096, 5000, 40000] {
                match class_for(size, align) {
                    Some(c) => {
                        assert!(class_size(c) >= size);
                        assert_eq!(class_size(c) % align, 0, "size {size} align {align}");
                    }
                    None => assert!(size.max(align) > SLAB_MAX || align > SLAB_MAX),
                }
            }
            align *= 2;
        }
    }

    #[test]
    fn pages_hold_at_least_eight_blocks() {
        for c in 0..NUM_CLASSES {
            let n = class_slices(c);
            assert!(n.is_power_of_two() && n <= 8);
            assert!(n * crate::slab::SLICE_SIZE / class_size(c) >= 8);
        }
    }
}
