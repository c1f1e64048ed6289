//! Allocation tags (R8.6, the kernel's allocation profiling): a thread names what it allocates
//! for (`tag("btree")`); each tag counts the bytes and blocks live under it and the calls made
//! under it. The innermost tag wins; a free is subtracted from the tag that allocated the block,
//! whichever thread frees it and whatever tag that thread has.
//!
//! Blocks are found by address in an open-addressing table (linear probing, backward-shift
//! deletion) whose memory comes straight from the platform — not from the allocator, and not
//! charged to the limit. While no tagged block is live, frees do not look.

use crate::lock::Lock;
use crate::sync::{AtomicUsize, Ordering};
use crate::{Core, Platform};
use core::fmt;
use core::ptr::{self, NonNull};

/// Most distinct tags (id 0 is "untagged").
pub const MAX_TAGS: usize = 128;

/// One table entry: 0 in `addr` is an empty slot. `meta` is the size in the low 48 bits and
/// the tag id in the high 16.
#[derive(Clone, Copy)]
#[repr(C)]
struct Entry {
    addr: usize,
    meta: u64,
}

const SIZE_BITS: u32 = 48;

impl Entry {
    fn pack(tag: u16, size: usize) -> u64 {
        (u64::from(tag) << SIZE_BITS) | (size as u64 & ((1 << SIZE_BITS) - 1))
    }

    /// (tag, size) of a `meta`.
    fn unpack(meta: u64) -> (u16, usize) {
        ((meta >> SIZE_BITS) as u16, (meta & ((1 << SIZE_BITS) - 1)) as usize)
    }
}

/// The address → (tag, size) table. Guarded by `Tags::table`.
struct Table {
    slots: *mut Entry,
    /// A power of two, or 0 before the first insertion.
    cap: usize,
    len: usize,
    /// Bytes mapped for `slots`.
    mapped: usize,
}

// SAFETY: the table's memory is owned by the table and reached only under its lock.
unsafe impl Send for Table {}

/// Counters of one tag. Any thread, Relaxed: a report is a snapshot.
struct Counter {
    bytes: AtomicUsize,
    live: AtomicUsize,
    calls: AtomicUsize,
}

/// The tags of a `Core`.
pub(crate) struct Tags {
    /// Names by id; `None` for unused ids. Written under the lock (registration only).
    names: Lock<[Option<&'static str>; MAX_TAGS]>,
    counters: [Counter; MAX_TAGS],
    table: Lock<Table>,
    /// Entries in the table: frees skip the lookup while it is zero. Changed under `table`.
    live: AtomicUsize,
}

impl Tags {
    pub(crate) const fn new() -> Tags {
        Tags {
            names: Lock::held_across_fork("tag names", [None; MAX_TAGS]),
            counters: [const {
                Counter { bytes: AtomicUsize::new(0), live: AtomicUsize::new(0), calls: AtomicUsize::new(0) }
            }; MAX_TAGS],
            table: Lock::held_across_fork(
                "tag table",
                Table { slots: ptr::null_mut(), cap: 0, len: 0, mapped: 0 },
            ),
            live: AtomicUsize::new(0),
        }
    }

    /// `fork` prepare: takes the two locks (after the allocator's own), so that no other
    /// thread holds one when the process forks.
    pub(crate) fn fork_prepare(&self, relax: impl Fn()) {
        self.names.fork_acquire(&relax);
        self.table.fork_acquire(&relax);
    }

    /// Releases what [`fork_prepare`](Self::fork_prepare) took.
    ///
    /// # Safety
    /// The calling thread ran `fork_prepare` (in this process or its parent) and has not
    /// released the locks since.
    pub(crate) unsafe fn fork_release(&self) {
        // SAFETY: per the contract.
        unsafe {
            self.table.fork_release();
            self.names.fork_release();
        }
    }

    #[inline(always)]
    pub(crate) fn any_live(&self) -> bool {
        self.live.load(Ordering::Relaxed) != 0
    }

    fn hash(addr: usize, cap: usize) -> usize {
        ((addr as u64 >> 4).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 20) as usize & (cap - 1)
    }

    /// Records a live block allocated by a call under `tag`. If the table cannot grow (the
    /// platform refused memory) the block is counted as a call but not as live bytes.
    pub(crate) fn track<P: Platform>(&self, core: &Core<P>, addr: usize, size: usize, tag: u16) {
        self.counters[tag as usize].calls.fetch_add(1, Ordering::Relaxed);
        self.insert(core, addr, size, tag);
    }

    /// Records a live block without counting a call (a resized block keeps its tag).
    pub(crate) fn insert<P: Platform>(&self, core: &Core<P>, addr: usize, size: usize, tag: u16) {
        let c = &self.counters[tag as usize];
        loop {
            let cap = {
                let mut t = core.lock(&self.table);
                if (t.len + 1) * 2 <= t.cap {
                    let meta = Entry::pack(tag, size);
                    let mut i = Self::hash(addr, t.cap);
                    // SAFETY: `slots` holds `cap` entries; the load factor stays below 1/2, so a
                    // free slot exists.
                    unsafe {
                        loop {
                            let e = &mut *t.slots.add(i);
                            if e.addr == 0 || e.addr == addr {
                                if e.addr == 0 {
                                    t.len += 1;
                                    self.live.fetch_add(1, Ordering::Relaxed);
                                } else {
                                    // Reuse of an address whose free was not seen: drop the stale
                                    // entry.
                                    self.sub(e.meta);
                                }
                                *e = Entry { addr, meta };
                                break;
                            }
                            i = (i + 1) & (t.cap - 1);
                        }
                    }
                    c.bytes.fetch_add(size, Ordering::Relaxed);
                    c.live.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                t.cap
            };
            if !self.grow(core, cap) {
                return;
            }
        }
    }

    fn sub(&self, meta: u64) {
        let (tag, size) = Entry::unpack(meta);
        let c = &self.counters[tag as usize];
        c.bytes.fetch_sub(size, Ordering::Relaxed);
        c.live.fetch_sub(1, Ordering::Relaxed);
    }

    /// Forgets a block; returns its tag and size if it was tagged.
    pub(crate) fn untrack<P: Platform>(&self, core: &Core<P>, addr: usize) -> Option<(u16, usize)> {
        let mut t = core.lock(&self.table);
        if t.len == 0 {
            return None;
        }
        let mask = t.cap - 1;
        let mut i = Self::hash(addr, t.cap);
        // SAFETY: `slots` holds `cap` entries, at least one of them empty.
        unsafe {
            loop {
                let e = *t.slots.add(i);
                if e.addr == 0 {
                    return None;
                }
                if e.addr == addr {
                    break;
                }
                i = (i + 1) & mask;
            }
            let found = *t.slots.add(i);
            // Backward-shift deletion: move later entries of the run into the hole when their
            // home slot is at or before it.
            let mut hole = i;
            let mut j = (i + 1) & mask;
            loop {
                let e = *t.slots.add(j);
                if e.addr == 0 {
                    break;
                }
                let home = Self::hash(e.addr, t.cap);
                if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(hole) & mask) {
                    *t.slots.add(hole) = e;
                    hole = j;
                }
                j = (j + 1) & mask;
            }
            *t.slots.add(hole) = Entry { addr: 0, meta: 0 };
            t.len -= 1;
            self.live.fetch_sub(1, Ordering::Relaxed);
            self.sub(found.meta);
            Some(Entry::unpack(found.meta))
        }
    }

    /// Doubles the table that had `cap` entries (from 4096 entries): the new one is mapped with
    /// the lock released, filled under it, and the old one unmapped after it. False if the
    /// platform refused memory. If another thread grew the table meanwhile, the new mapping
    /// goes back unused.
    fn grow<P: Platform>(&self, core: &Core<P>, cap: usize) -> bool {
        let new_cap = (cap * 2).max(4096);
        let bytes = (new_cap * size_of::<Entry>()).next_multiple_of(P::PAGE_SIZE);
        // SAFETY: a page multiple at page alignment.
        let Some(mem) = (unsafe { core.out("map").map(bytes, P::PAGE_SIZE) }) else { return false };
        let slots = mem.as_ptr().cast::<Entry>();
        if !P::MAP_ZEROED {
            // SAFETY: fresh memory for `new_cap` entries.
            unsafe { ptr::write_bytes(slots, 0, new_cap) };
        }
        let unused = {
            let mut t = core.lock(&self.table);
            if t.cap != cap {
                (mem, bytes)
            } else {
                // SAFETY: fresh memory for `new_cap` entries; the old table's `cap` entries
                // are readable under the lock.
                unsafe {
                    for k in 0..t.cap {
                        let e = *t.slots.add(k);
                        if e.addr != 0 {
                            let mut i = Self::hash(e.addr, new_cap);
                            while (*slots.add(i)).addr != 0 {
                                i = (i + 1) & (new_cap - 1);
                            }
                            *slots.add(i) = e;
                        }
                    }
                }
                let old = (t.slots, t.mapped);
                t.slots = slots;
                t.cap = new_cap;
                t.mapped = bytes;
                match NonNull::new(old.0) {
                    Some(p) => (p.cast(), old.1),
                    None => return true,
                }
            }
        };
        // SAFETY: a mapping of ours that the table no longer references.
        unsafe { core.out("unmap").unmap(unused.0, unused.1) };
        true
    }
}

/// One tag in a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TagRow {
    /// The tag's name.
    pub name: &'static str,
    /// Bytes live under the tag (as requested, not rounded to size classes).
    pub bytes: usize,
    /// Blocks live under the tag.
    pub live: usize,
    /// Allocations made under the tag, ever.
    pub calls: u64,
}

impl<P: Platform> Core<P> {
    /// The id of tag `name`, registering it; `None` once [`MAX_TAGS`] names exist.
    pub fn tag_id(&self, name: &'static str) -> Option<u16> {
        let mut names = self.lock(&self.debug.tags.names);
        let mut free = None;
        for (i, n) in names.iter().enumerate().skip(1) {
            match n {
                Some(n) if *n == name => return Some(i as u16),
                None if free.is_none() => free = Some(i),
                _ => {}
            }
        }
        let i = free?;
        names[i] = Some(name);
        Some(i as u16)
    }

    /// Sets the calling thread's tag (0: none); returns the previous one, to hand back to
    /// `tag_set` when the tagged code ends.
    ///
    /// ```
    /// # #[cfg(feature = "mock")] {
    /// use ctxalloc_core::{mock::MockPlatform, Core};
    /// use core::alloc::Layout;
    /// let core = Core::new(MockPlatform::new(64 << 20));
    /// let id = core.tag_id("inodes").unwrap();
    /// let prev = core.tag_set(id);
    /// let l = Layout::from_size_align(600, 8).unwrap();
    /// let p = unsafe { core.alloc(l) };
    /// core.tag_set(prev);
    /// let row = |core: &Core<_>| core.tag_rows().into_iter().flatten().find(|r| r.name == "inodes").unwrap();
    /// assert_eq!((row(&core).bytes, row(&core).live, row(&core).calls), (600, 1, 1));
    /// unsafe { core.dealloc(p, l) }; // untagged code frees it: the tag's bytes go down
    /// assert_eq!((row(&core).bytes, row(&core).live), (0, 0));
    /// # }
    /// ```
    pub fn tag_set(&self, id: u16) -> u16 {
        let t = self.thread();
        let prev = t.debug.tag.replace(id);
        t.scope.set_armed(super::ARM_TAG, id != 0);
        prev
    }

    /// Every registered tag with its counters, in id order (`None` past the last).
    pub fn tag_rows(&self) -> [Option<TagRow>; MAX_TAGS] {
        let names = *self.lock(&self.debug.tags.names);
        core::array::from_fn(|i| {
            let name = names[i]?;
            let c = &self.debug.tags.counters[i];
            Some(TagRow {
                name,
                bytes: c.bytes.load(Ordering::Relaxed),
                live: c.live.load(Ordering::Relaxed),
                calls: c.calls.load(Ordering::Relaxed) as u64,
            })
        })
    }

    /// Writes a `/proc/allocinfo`-like report: a header, then one line per tag — live bytes,
    /// live blocks, calls, name — sorted by live bytes, largest first. Allocates nothing.
    ///
    /// ```
    /// # #[cfg(feature = "mock")] {
    /// use ctxalloc_core::{mock::MockPlatform, Core, report::ReportBuf};
    /// let core = Core::new(MockPlatform::new(64 << 20));
    /// let mut out = ReportBuf::new();
    /// core.write_allocinfo(&mut out).unwrap();
    /// assert!(out.as_str().starts_with("allocinfo - version: 1.0 (ctxalloc)"));
    /// # }
    /// ```
    pub fn write_allocinfo(&self, w: &mut dyn fmt::Write) -> fmt::Result {
        let rows = self.tag_rows();
        let mut order = [0usize; MAX_TAGS];
        let mut n = 0;
        for (i, r) in rows.iter().enumerate() {
            if r.is_some() {
                order[n] = i;
                n += 1;
            }
        }
        let bytes = |i: usize| rows[i].map_or(0, |r| r.bytes);
        order[..n].sort_unstable_by(|&a, &b| bytes(b).cmp(&bytes(a)).then(a.cmp(&b)));
        writeln!(w, "allocinfo - version: 1.0 (ctxalloc)")?;
        writeln!(w, "# <bytes> <live> <calls> <tag>")?;
        for &i in &order[..n] {
            if let Some(r) = rows[i] {
                writeln!(w, "{:>12} {:>9} {:>10} {}", r.bytes, r.live, r.calls, r.name)?;
            }
        }
        Ok(())
    }
}
