//! vmap: the vmalloc-like path for requests above the slab maximum or with alignments no size
//! class has. Page-granular mappings straight from the page source, grown in place by a mapping
//! right after them (or moved by `remap`) where the platform can, and a registry of areas.
//!
//! Each area has a descriptor ([`VmArea`]) allocated *from the slab*, and that allocation runs
//! inside an internal scope equal to the caller's effective context — the kernel's fix for
//! `vmalloc(GFP_NOFS)` (R2.1): the caller's restrictions hold for the metadata too, so a per-call
//! NOFS large allocation can never enter a filesystem shrinker through its descriptor.
//!
//! The registry is a chained hash table keyed by address, under `Core::vmap`; its bucket array
//! comes from the page source directly and doubles as areas are added. The lock is never held
//! across a call that could allocate or reclaim.
//!
//! Freed areas are kept mapped (and charged) in a small cache, where the platform can purge, so
//! that the pages a program touched serve its next large allocations without a system call or
//! a page fault (5–25 MiB blocks churned: page faults were 12× tcmalloc's when only a cached
//! area of about the same size could be reused). An allocation takes the smallest cached area
//! that is long enough, split when more than an eighth would be left over (the rest stays
//! cached); failing that, the longest shorter one, grown in place by a mapping beside it —
//! below, where the kernel puts new mappings, else above — or, failing that, moved and grown by
//! `remap`: its touched pages serve the area either way, and only the growth is faulted in
//! (page faults 359 k → 254 k on mimalloc-bench's malloc-large; tcmalloc 185 k). A freed area
//! merges with cached neighbours. The cache holds at
//! most [`AREA_CACHE`] areas and as many bytes as are in use outside it (plus 4 MiB; shorter
//! areas go first when usage falls), and none under a memory limit (there usage is what the
//! limit sees); `trim` empties it, and the background thread once it has served no allocation
//! for `PURGE_DELAY_NS`.

use crate::gfp::{Effective, Gfp};
use crate::page::PurgeClock;
use crate::reclaim::{Attempt, Step};
use crate::size_class::class_of;
use crate::sync::Ordering;
use crate::{Core, Platform};
use core::alloc::Layout;
use core::panic::Location;
use core::ptr::{self, NonNull};

/// One mapped area. Allocated from the slab; owned by the registry while registered, by the
/// thread working on the area otherwise.
#[repr(C)]
pub(crate) struct VmArea {
    /// Start of the mapping (the pointer handed out).
    addr: usize,
    /// Length of the mapping.
    len: usize,
    /// Next area in the bucket.
    next: *mut VmArea,
}

/// The registry, under `Core::vmap`.
pub(crate) struct Registry {
    /// `1 << shift` bucket heads, from the page source; null before the first area.
    buckets: *mut *mut VmArea,
    /// log2 of the bucket count.
    shift: u32,
    /// Areas registered.
    pub(crate) count: usize,
    /// Bytes mapped by registered areas.
    pub(crate) bytes: usize,
    /// Freed areas kept mapped and charged: `(addr, len)`, `len == 0` for an empty slot.
    cache: [(usize, usize); AREA_CACHE],
    /// Bytes in `cache`.
    cached: usize,
    /// Armed when an area is cached with none waiting before.
    pub(crate) clock: PurgeClock,
    /// An allocation was served from the cache since the clock was armed: the cache is in
    /// use, and the aged flush waits another delay instead.
    served: bool,
}

/// Freed areas the cache keeps.
const AREA_CACHE: usize = 16;
/// The largest area the cache keeps.
const AREA_CACHE_MAX: usize = 64 << 20;
/// Cache bytes allowed beyond the bytes in use outside the cache.
const AREA_CACHE_SLACK: usize = 4 << 20;

// SAFETY: the registry owns its buckets and descriptors; it moves between threads under its lock.
unsafe impl Send for Registry {}

const INITIAL_SHIFT: u32 = 9;

impl Registry {
    pub(crate) const fn new() -> Self {
        Registry {
            buckets: ptr::null_mut(),
            shift: 0,
            count: 0,
            bytes: 0,
            cache: [(0, 0); AREA_CACHE],
            cached: 0,
            served: false,
            clock: PurgeClock::new(),
        }
    }

    #[inline]
    fn bucket(&self, addr: usize) -> usize {
        let h = ((addr as u64) >> 12).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (h >> (64 - self.shift)) as usize
    }

    /// Whether one more area needs a bigger table.
    fn needs_grow(&self) -> bool {
        self.buckets.is_null() || self.count + 1 > 2 << self.shift
    }

    /// The shift of the next table.
    fn next_shift(&self) -> u32 {
        if self.buckets.is_null() {
            INITIAL_SHIFT
        } else {
            self.shift + 1
        }
    }

    /// Moves every area into `buckets` (zeroed, `1 << shift` long); returns the old table.
    ///
    /// # Safety
    /// `buckets` is zeroed memory for `1 << shift` pointers.
    unsafe fn rehash(&mut self, buckets: *mut *mut VmArea, shift: u32) -> (*mut *mut VmArea, u32) {
        let old = (self.buckets, self.shift);
        self.buckets = buckets;
        self.shift = shift;
        if !old.0.is_null() {
            for i in 0..1usize << old.1 {
                // SAFETY: the old table and its chains are ours under the lock.
                unsafe {
                    let mut a = *old.0.add(i);
                    while !a.is_null() {
                        let next = (*a).next;
                        let b = self.buckets.add(self.bucket((*a).addr));
                        (*a).next = *b;
                        *b = a;
                        a = next;
                    }
                }
            }
        }
        old
    }

    /// # Safety
    /// `a` is a filled descriptor on no chain; the table has room (`!needs_grow()`).
    unsafe fn insert(&mut self, a: *mut VmArea) {
        // SAFETY: per the contract.
        unsafe {
            let b = self.buckets.add(self.bucket((*a).addr));
            (*a).next = *b;
            *b = a;
            self.bytes += (*a).len;
        }
        self.count += 1;
    }

    /// Unlinks and returns the area starting at `addr`, or null.
    fn remove(&mut self, addr: usize) -> *mut VmArea {
        if self.buckets.is_null() {
            return ptr::null_mut();
        }
        // SAFETY: the table and its chains are ours under the lock.
        unsafe {
            let mut link = self.buckets.add(self.bucket(addr));
            while !(*link).is_null() {
                let a = *link;
                if (*a).addr == addr {
                    *link = (*a).next;
                    self.count -= 1;
                    self.bytes -= (*a).len;
                    return a;
                }
                link = &raw mut (*a).next;
            }
        }
        ptr::null_mut()
    }
}

/// `n` rounded up to a multiple of `page`, or `None` on overflow.
#[inline]
fn page_round(n: usize, page: usize) -> Option<usize> {
    n.max(1).checked_next_multiple_of(page)
}

impl<P: Platform> Core<P> {
    /// Allocates a vmap area for `layout`.
    ///
    /// # Safety
    /// None beyond `GlobalAlloc::alloc`'s: the result is null or a fresh block.
    #[track_caller]
    pub(crate) unsafe fn vmap_alloc(&self, layout: Layout, call: Gfp) -> *mut u8 {
        self.start_background_if_wanted();
        // SAFETY: the platform hands out the calling thread's context.
        let t = unsafe { &*self.platform.thread() };
        let eff = self.effective_of(call, t);
        let align = layout.align().max(P::PAGE_SIZE);
        let Some(len) = page_round(layout.size(), P::PAGE_SIZE).filter(|&l| l <= isize::MAX as usize - align)
        else {
            return self.alloc_failed(layout.size(), eff);
        };

        // The descriptor, from the slab, inside the caller's effective context (R2.1).
        let cookie = t.scope.save(eff.scope_bits(), Location::caller());
        let modifiers = call & (Gfp::NOWARN | Gfp::NORETRY | Gfp::MAYFAIL | Gfp::NOMEMALLOC);
        // SAFETY: a slab class for a small, 8-aligned layout.
        let desc = unsafe { self.alloc_class(class_of(size_of::<VmArea>()), size_of::<VmArea>(), modifiers) }
            .cast::<VmArea>();
        t.scope.restore(cookie, |m| self.mispair(m));
        if desc.is_null() {
            return ptr::null_mut();
        }

        // The area: a cached one, or charged and mapped, through reclaim when the limit or the
        // page source refuses (a real ENOMEM takes the same path as the limit). `dirty`: the
        // range of it that may hold old data.
        let mut attempt = Attempt::new(len);
        let (p, len, dirty) = if let Some(hit) = self.area_cache_take(len, align, eff) {
            hit
        } else {
            loop {
                if self.charge(len, attempt.context(eff)) {
                    // SAFETY: `len` and `align` are page multiples; `align` a power of two.
                    match unsafe { self.os_map(len, align) } {
                        Some(p) => break (p, len, (0, 0)),
                        None => self.uncharge(len),
                    }
                }
                if let Step::Fail(cause) = self.reclaim_step(eff, &mut attempt) {
                    // SAFETY: the descriptor is ours.
                    unsafe { self.slab_free(desc.cast()) };
                    return self.reclaim_failed(layout.size(), eff, cause);
                }
            }
        };
        // SAFETY: the descriptor is ours until registered.
        unsafe {
            desc.write(VmArea { addr: p.as_ptr().addr(), len, next: ptr::null_mut() });
            if !self.registry_insert(desc, eff) {
                self.os_unmap(p, len);
                self.uncharge(len);
                self.slab_free(desc.cast());
                return self.alloc_failed(layout.size(), eff);
            }
        }
        if call.contains(Gfp::ZERO) {
            let (from, to) = if P::MAP_ZEROED { dirty } else { (0, len) };
            let (from, to) = (from.min(layout.size()), to.min(layout.size()));
            // SAFETY: the mapping is ours and `len` long; `from ≤ to ≤ len`.
            unsafe { ptr::write_bytes(p.as_ptr().add(from), 0, to - from) };
        }
        p.as_ptr()
    }

    /// Registers a filled descriptor, growing the table first if it is due and memory allows
    /// (otherwise chains just get longer). False only if there is no table at all and no memory
    /// for one.
    ///
    /// # Safety
    /// `desc` is a filled descriptor nobody else knows.
    unsafe fn registry_insert(&self, desc: *mut VmArea, eff: Effective) -> bool {
        let mut prepared: Option<(NonNull<u8>, u32)> = None;
        let mut tried = false;
        loop {
            let mut reg = self.lock(&self.vmap);
            let mut retired = None;
            if let Some((table, shift)) = prepared.take() {
                if reg.needs_grow() && reg.next_shift() == shift {
                    // SAFETY: a zeroed table of `1 << shift` heads.
                    let (old, old_shift) = unsafe { reg.rehash(table.as_ptr().cast(), shift) };
                    retired = NonNull::new(old.cast::<u8>()).map(|t| (t, old_shift));
                } else {
                    retired = Some((table, shift)); // someone else grew it meanwhile
                }
            }
            let ready = !reg.needs_grow() || (tried && !reg.buckets.is_null());
            if ready {
                // SAFETY: per the contract; the table exists.
                unsafe { reg.insert(desc) };
            }
            let shift = reg.next_shift();
            drop(reg);
            if let Some((t, s)) = retired {
                // SAFETY: a table no longer referenced.
                unsafe { self.table_unmap(t, s) };
            }
            if ready {
                return true;
            }
            if tried {
                return false;
            }
            tried = true;
            // A bigger table, mapped outside the lock.
            prepared = self.table_map(shift, eff).map(|t| (t, shift));
        }
    }

    fn table_bytes(shift: u32) -> usize {
        (size_of::<*mut VmArea>() << shift).next_multiple_of(P::PAGE_SIZE)
    }

    /// A zeroed, charged bucket table of `1 << shift` heads.
    fn table_map(&self, shift: u32, eff: Effective) -> Option<NonNull<u8>> {
        let bytes = Self::table_bytes(shift);
        if !self.charge(bytes, eff) {
            return None;
        }
        // SAFETY: whole pages.
        let Some(t) = (unsafe { self.os_map(bytes, P::PAGE_SIZE) }) else {
            self.uncharge(bytes);
            return None;
        };
        if !P::MAP_ZEROED {
            // SAFETY: a fresh mapping of `bytes`.
            unsafe { ptr::write_bytes(t.as_ptr(), 0, bytes) };
        }
        Some(t)
    }

    /// # Safety
    /// `t` is a table from `table_map(shift, _)` that nothing references.
    unsafe fn table_unmap(&self, t: NonNull<u8>, shift: u32) {
        let bytes = Self::table_bytes(shift);
        // SAFETY: per the contract.
        unsafe { self.os_unmap(t, bytes) };
        self.uncharge(bytes);
    }

    /// Frees a vmap area. A pointer that is not a live area is reported and ignored.
    ///
    /// # Safety
    /// `ptr` came from [`vmap_alloc`](Self::vmap_alloc) (or is reported as a bad free).
    pub(crate) unsafe fn vmap_free(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded.
        if !unsafe { self.vmap_free_if_area(ptr) } {
            self.bad_free(ptr, Some(layout), "not a live large allocation");
        }
    }

    /// Frees `ptr` if it is a live vmap area; returns whether it was.
    ///
    /// # Safety
    /// If `ptr` is a live area, the caller owns it and gives it up.
    pub(crate) unsafe fn vmap_free_if_area(&self, ptr: *mut u8) -> bool {
        let desc = self.lock(&self.vmap).remove(ptr.addr());
        if desc.is_null() {
            return false;
        }
        // SAFETY: the descriptor is ours now; the mapping is the caller's to give up.
        unsafe {
            let VmArea { addr, len, .. } = desc.read();
            self.slab_free(desc.cast());
            self.area_cache_put(addr, len);
        }
        true
    }

    /// Keeps a freed area (mapped, charged) for a later allocation, merged with any cached
    /// neighbour; or, if the cache may not hold it, unmaps and uncharges it. Shorter cached areas
    /// give way to it when the slots or the cap run out.
    ///
    /// # Safety
    /// `addr`/`len` is a whole mapping (or adjacent mappings) of ours that nobody uses.
    unsafe fn area_cache_put(&self, addr: usize, len: usize) {
        // Under a limit, usage is what the limit sees: freed areas go back at once.
        if !P::CAN_PURGE || len > AREA_CACHE_MAX || self.acct.limit().is_some() {
            // SAFETY: per the contract.
            return unsafe { self.area_unmap(addr, len) };
        }
        let mut drop = [(0, 0); AREA_CACHE + 1];
        let first = {
            let mut reg = self.lock(&self.vmap);
            let (mut a, mut l) = (addr, len);
            for i in 0..AREA_CACHE {
                let (ca, cl) = reg.cache[i];
                if cl != 0 && (ca + cl == a || a + l == ca) && l + cl <= AREA_CACHE_MAX {
                    reg.cache[i] = (0, 0);
                    reg.cached -= cl;
                    (a, l) = (a.min(ca), l + cl);
                }
            }
            // The cap: as many bytes as are in use outside the cache (plus the slack), so that
            // a program churning large blocks reuses its touched pages (5–25 MiB blocks, 20
            // live: a quarter gave 3.8× the page faults, 2.9× the time); shorter areas go first.
            let cap = self.acct.usage().saturating_sub(reg.cached + l) + AREA_CACHE_SLACK;
            let mut n = 0;
            let mut cached = false;
            if l <= cap {
                while reg.cached + l > cap || reg.cache.iter().all(|&(_, cl)| cl != 0) {
                    let Some(i) =
                        (0..AREA_CACHE).filter(|&i| reg.cache[i].1 != 0).min_by_key(|&i| reg.cache[i].1)
                    else {
                        break;
                    };
                    drop[n] = core::mem::take(&mut reg.cache[i]);
                    reg.cached -= drop[n].1;
                    n += 1;
                }
                let slot = reg.cache.iter().position(|&(_, cl)| cl == 0).unwrap_or(0);
                // Poisoned while cached (still ours: the lock is held).
                crate::track::poison(self.platform.ptr_from_addr(addr), len);
                reg.cache[slot] = (a, l);
                reg.cached += l;
                cached = true;
            } else {
                drop[n] = (a, l);
            }
            cached && reg.clock.arm(|| self.platform.now_ns())
        };
        for (a, l) in drop {
            if l != 0 {
                // SAFETY: out of the cache, so nobody's.
                unsafe { self.area_unmap(a, l) };
            }
        }
        if first {
            self.purge_wanted();
        }
    }

    /// Unmaps and uncharges an area nobody uses.
    ///
    /// # Safety
    /// `addr`/`len` is a whole mapping (or adjacent mappings) of ours that nobody uses.
    unsafe fn area_unmap(&self, addr: usize, len: usize) {
        // SAFETY: per the contract.
        unsafe { self.os_unmap(NonNull::new_unchecked(self.platform.ptr_from_addr(addr)), len) };
        self.uncharge(len);
    }

    /// A cached area for `len` bytes (page multiple) at `align`, as `(pointer, its length, the
    /// range of it that may hold old data)`: the shortest cached area at least `len` long —
    /// split if more than an eighth would be left, the rest staying cached — or, at a page
    /// alignment, the longest shorter one grown to `len` (the growth charged in `eff`): in place
    /// by a mapping beside it — below, where new mappings usually go, else above — or, failing
    /// that, moved by `remap`; its touched pages serve the area either way. `None` if neither.
    fn area_cache_take(
        &self,
        len: usize,
        align: usize,
        eff: Effective,
    ) -> Option<(NonNull<u8>, usize, (usize, usize))> {
        if !P::CAN_PURGE {
            return None;
        }
        let (addr, short) = {
            let mut reg = self.lock(&self.vmap);
            let fits = (0..AREA_CACHE)
                .filter(|&i| {
                    let (a, l) = reg.cache[i];
                    l >= len && a % align == 0
                })
                .min_by_key(|&i| reg.cache[i].1);
            if let Some(i) = fits {
                let (a, l) = reg.cache[i];
                let take = if l - len > len / 8 { len } else { l };
                reg.cache[i] = if take == l { (0, 0) } else { (a + take, l - take) };
                reg.cached -= take;
                reg.served = true;
                crate::track::unpoison(self.platform.ptr_from_addr(a), take);
                // SAFETY: a cached mapping of ours that nobody uses.
                return Some((
                    unsafe { NonNull::new_unchecked(self.platform.ptr_from_addr(a)) },
                    take,
                    (0, take),
                ));
            }
            if align > P::PAGE_SIZE {
                return None;
            }
            let i = (0..AREA_CACHE).max_by_key(|&i| reg.cache[i].1)?;
            let (a, l) = core::mem::take(&mut reg.cache[i]);
            if l == 0 {
                return None;
            }
            reg.cached -= l;
            reg.served = true;
            crate::track::unpoison(self.platform.ptr_from_addr(a), l);
            (a, l)
        };
        // Grown outside the lock: mapping is a call out.
        let more = len - short;
        if self.charge(more, eff) {
            // SAFETY: page-aligned ranges beside a cached mapping of ours that nobody uses.
            unsafe {
                if addr >= more && self.os_map_at(addr - more, more) {
                    return Some((
                        NonNull::new_unchecked(self.platform.ptr_from_addr(addr - more)),
                        len,
                        (more, len),
                    ));
                }
                if self.os_map_at(addr + short, more) {
                    return Some((
                        NonNull::new_unchecked(self.platform.ptr_from_addr(addr)),
                        len,
                        (0, short),
                    ));
                }
            }
            // SAFETY: a cached mapping of ours that nobody uses (or adjacent ones: then the
            // platform refuses and the area goes back).
            let moved = unsafe {
                self.out("remap").remap(NonNull::new_unchecked(self.platform.ptr_from_addr(addr)), short, len)
            };
            if let Some(p) = moved {
                return Some((p, len, (0, short)));
            }
            self.uncharge(more);
        }
        // SAFETY: still ours and unused.
        unsafe { self.area_cache_put(addr, short) };
        None
    }

    /// Unmaps the cached areas — all of them, or with `aged` only once the cache has waited
    /// `PURGE_DELAY_NS` without serving an allocation (a program that keeps allocating large
    /// blocks keeps its cache; one that stops gets the memory back a delay later). Returns
    /// whether areas are still waiting.
    pub(crate) fn area_cache_flush(&self, aged: bool) -> bool {
        let taken = {
            let mut reg = self.lock(&self.vmap);
            if aged && !reg.clock.due(|| self.platform.now_ns()) {
                return reg.clock.armed();
            }
            if aged && core::mem::take(&mut reg.served) {
                reg.clock.disarm();
                reg.clock.arm(|| self.platform.now_ns());
                return true;
            }
            reg.cached = 0;
            reg.clock.disarm();
            core::mem::replace(&mut reg.cache, [(0, 0); AREA_CACHE])
        };
        for (addr, len) in taken {
            if len != 0 {
                // SAFETY: a cached mapping of ours that nobody uses.
                unsafe { self.area_unmap(addr, len) };
            }
        }
        false
    }

    /// Resizes a vmap area to another vmap size: in place or by `remap` when the platform can
    /// (alignment ≤ a page: `remap` may move to any page boundary); null if not possible, and
    /// then the area is untouched. Growth is charged in the effective context of `call`.
    ///
    /// # Safety
    /// `ptr` is a live vmap area of `layout`; `new_size` also belongs to vmap.
    pub(crate) unsafe fn vmap_resize(
        &self,
        ptr: *mut u8,
        layout: Layout,
        new_size: usize,
        call: Gfp,
    ) -> *mut u8 {
        if layout.align() > P::PAGE_SIZE {
            return ptr::null_mut();
        }
        let Some(new_len) = page_round(new_size, P::PAGE_SIZE).filter(|&l| l <= isize::MAX as usize) else {
            return ptr::null_mut();
        };
        let desc = self.lock(&self.vmap).remove(ptr.addr());
        if desc.is_null() {
            self.bad_free(ptr, Some(layout), "realloc of a pointer that is not a live large allocation");
            return ptr::null_mut();
        }
        // SAFETY: the descriptor is ours while unregistered.
        let old_len = unsafe { (*desc).len };
        let mut result = ptr::null_mut();
        if new_len == old_len {
            result = ptr;
        } else {
            // SAFETY: the platform hands out the calling thread's context.
            let t = unsafe { &*self.platform.thread() };
            let eff = self.effective_of(call, t);
            let grow = new_len.saturating_sub(old_len);
            if grow == 0 || self.charge(grow, eff) {
                // SAFETY: `ptr`/`old_len` is the live mapping; `new_len` is page-rounded. Growth
                // tries a mapping right after it first: in place, nothing moves.
                let moved = unsafe {
                    if grow != 0 && self.os_map_at(ptr.addr() + old_len, grow) {
                        Some(NonNull::new_unchecked(ptr))
                    } else {
                        self.out("remap").remap(
                            NonNull::new_unchecked(self.platform.ptr_from_addr(ptr.addr())),
                            old_len,
                            new_len,
                        )
                    }
                };
                match moved {
                    Some(p) => {
                        if new_len < old_len {
                            self.uncharge(old_len - new_len);
                        }
                        // SAFETY: ours while unregistered.
                        unsafe {
                            (*desc).addr = p.as_ptr().addr();
                            (*desc).len = new_len;
                        }
                        result = p.as_ptr();
                    }
                    None => self.uncharge(grow),
                }
            }
        }
        // SAFETY: the descriptor is filled and unregistered; the table it left has room for it.
        let back = unsafe { self.registry_insert(desc, Effective::new(Gfp::NORECLAIM, Gfp::KERNEL)) };
        debug_assert!(back);
        result
    }

    /// Bytes usable at a vmap pointer (its mapping's length), or 0 if not a live area.
    pub(crate) fn vmap_usable(&self, ptr: *const u8) -> usize {
        let reg = self.lock(&self.vmap);
        if reg.buckets.is_null() {
            return 0;
        }
        // SAFETY: the table and chains are ours under the lock.
        unsafe {
            let mut a = *reg.buckets.add(reg.bucket(ptr.addr()));
            while !a.is_null() {
                if (*a).addr == ptr.addr() {
                    return (*a).len;
                }
                a = (*a).next;
            }
        }
        0
    }

    /// Bytes vmap holds charged: live areas, cached areas and the bucket table. For
    /// [`Core::audit_usage`].
    #[cfg(any(test, feature = "mock"))]
    pub(crate) fn vmap_charged(&self) -> usize {
        let reg = self.lock(&self.vmap);
        let table = if reg.buckets.is_null() { 0 } else { Self::table_bytes(reg.shift) };
        reg.bytes + reg.cached + table
    }

    /// Number of live areas and their bytes.
    pub(crate) fn vmap_totals(&self) -> (usize, usize) {
        let reg = self.lock(&self.vmap);
        (reg.count, reg.bytes)
    }

    /// Counts and reports a free the allocator cannot match to a live allocation (`layout` is
    /// `None` for frees without a size). Found under an allocator lock (the slab's list checks),
    /// the report waits until the lock is released.
    pub(crate) fn bad_free(&self, ptr: *mut u8, layout: Option<Layout>, why: &'static str) {
        self.counters.bad_frees.fetch_add(1, Ordering::Relaxed);
        let t = self.thread();
        if t.locks.may_call_out() {
            self.report_bad_free(ptr.addr(), layout, why);
        } else {
            t.locks.defer_bad_free(ptr.addr(), why);
        }
    }

    /// The report of a bad free (the caller holds no allocator lock).
    pub(crate) fn report_bad_free(&self, addr: usize, layout: Option<Layout>, why: &str) {
        crate::report::report(
            &self.platform,
            format_args!(
                "ctxalloc: free of {:p} ({}) ignored: {why} — a double free or a pointer from \
                 another allocator",
                ptr::without_provenance::<u8>(addr),
                Shown(layout)
            ),
        );
    }
}

/// A layout in a report: "size 8, align 8", or "no size given" for a free without one.
struct Shown(Option<Layout>);

impl core::fmt::Display for Shown {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Some(l) => write!(f, "size {}, align {}", l.size(), l.align()),
            None => f.write_str("no size given"),
        }
    }
}
