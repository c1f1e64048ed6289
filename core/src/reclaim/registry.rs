//! The shrinker registry: slots in chunks that are only ever appended, never freed, so reclaim
//! walks it without a lock and without allocating, while shrinkers come and go.
//!
//! ## Protocol (R4.9, without RCU)
//!
//! A slot's `word` packs its state — FREE, CLAIMED (being filled by a registering thread), LIVE,
//! DYING — in the low two bits and its number of users (calls in flight) above them, so every
//! step is one read-modify-write of one atomic and no argument about store/load ordering across
//! two variables is needed:
//!
//! * a walker *gets* a slot with a CAS that adds a user only if the state is LIVE (Acquire), and
//!   *puts* it with a subtraction (Release); the last user out of a DYING slot wakes the waiter;
//! * unregistering CASes the state to DYING, then waits (on the word, a futex) until the users
//!   are gone (Acquire): every call in flight happened before, and no call can start after —
//!   a shrinker is never called once `unregister` returns.
//!
//! `shrinker` is written while the slot is CLAIMED (by its registering thread only) and
//! published by the Release store of LIVE; walkers read it only while holding a user reference
//! on a LIVE slot (Acquire).

use super::shrinker::Shrinker;
use crate::sync::{AtomicPtr, AtomicU32, AtomicUsize, Ordering, RawCell};
use core::ptr::{self, NonNull};

const FREE: u32 = 0;
const CLAIMED: u32 = 1;
const LIVE: u32 = 2;
const DYING: u32 = 3;

/// Slots per chunk.
pub(crate) const SLOTS: usize = 32;

/// Bits of `Slot::word` holding the state.
const STATE: u32 = 3;
/// One user in `Slot::word`.
const USER: u32 = 4;

/// One registered shrinker, with its reclaim state and statistics.
pub struct Slot {
    /// `users · 4 | state` (FREE / CLAIMED / LIVE / DYING). See the module documentation. A
    /// futex word: the unregistering thread waits on it.
    word: AtomicU32,
    /// The shrinker. See the module documentation.
    shrinker: RawCell<Option<NonNull<dyn Shrinker>>>,
    /// Objects of scanning deferred by contexts that could not call the shrinker (R4.3).
    pub(crate) deferred: AtomicUsize,
    /// What `count` returned last time it was called.
    pub(crate) last_freeable: AtomicUsize,
    /// `scan` calls.
    pub(crate) calls: AtomicUsize,
    /// Objects freed.
    pub(crate) freed: AtomicUsize,
    /// Times the shrinker was passed over because the context forbade it.
    pub(crate) skipped: AtomicUsize,
}

// SAFETY: the shrinker pointer is only read under the protocol above; the shrinker itself is
// `Send + Sync`.
unsafe impl Sync for Slot {}
// SAFETY: as above.
unsafe impl Send for Slot {}

impl Slot {
    fn new() -> Slot {
        Slot {
            word: AtomicU32::new(FREE),
            shrinker: RawCell::new(None),
            deferred: AtomicUsize::new(0),
            last_freeable: AtomicUsize::new(0),
            calls: AtomicUsize::new(0),
            freed: AtomicUsize::new(0),
            skipped: AtomicUsize::new(0),
        }
    }

    /// Takes a user reference if the slot is LIVE.
    #[inline]
    fn get(&self) -> bool {
        let mut w = self.word.load(Ordering::Relaxed);
        loop {
            if w & STATE != LIVE {
                return false;
            }
            match self.word.compare_exchange_weak(w, w + USER, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(x) => w = x,
            }
        }
    }

    /// Drops a user reference; wakes an unregistering thread when the last one leaves.
    #[inline]
    fn put(&self, wake: &impl Fn(&AtomicU32)) {
        let before = self.word.fetch_sub(USER, Ordering::Release);
        if before == USER | DYING {
            wake(&self.word);
        }
    }

    /// The shrinker of a slot the caller holds.
    fn shrinker(&self) -> NonNull<dyn Shrinker> {
        // SAFETY: the caller holds a user reference on a LIVE slot, so the pointer was published
        // (Acquire in `get`) and is not being written.
        self.shrinker.with(|p| unsafe { *p }).expect("a live slot has a shrinker")
    }
}

/// A chunk of slots. Chunks are linked newest first and never unlinked.
pub struct Chunk {
    slots: [Slot; SLOTS],
    next: AtomicPtr<Chunk>,
}

impl Chunk {
    /// A chunk of free slots, to be written into memory from [`Registry::register`]'s provider.
    pub fn new() -> Chunk {
        Chunk { slots: core::array::from_fn(|_| Slot::new()), next: AtomicPtr::new(ptr::null_mut()) }
    }
}

impl Default for Chunk {
    fn default() -> Self {
        Self::new()
    }
}

/// The registry.
pub struct Registry {
    /// Newest chunk; append-only (CAS), never freed.
    head: AtomicPtr<Chunk>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// An empty registry.
    #[cfg(not(all(loom, test)))]
    pub const fn new() -> Registry {
        Registry { head: AtomicPtr::new(ptr::null_mut()) }
    }

    /// An empty registry.
    #[cfg(all(loom, test))]
    pub fn new() -> Registry {
        Registry { head: AtomicPtr::new(ptr::null_mut()) }
    }

    fn chunks(&self) -> impl Iterator<Item = &Chunk> {
        let mut c = self.head.load(Ordering::Acquire);
        core::iter::from_fn(move || {
            // SAFETY: chunks are published with Release and never freed.
            let chunk = unsafe { c.as_ref()? };
            c = chunk.next.load(Ordering::Acquire);
            Some(chunk)
        })
    }

    /// Registers `shrinker`; `new_chunk` provides memory for one more [`Chunk`] when every slot
    /// is taken (it is called outside any lock). `None` if it could not.
    ///
    /// # Safety
    /// `shrinker` stays valid until [`unregister`](Self::unregister) of the returned slot returns.
    pub unsafe fn register(
        &self,
        shrinker: NonNull<dyn Shrinker>,
        new_chunk: impl FnOnce() -> Option<NonNull<Chunk>>,
    ) -> Option<&Slot> {
        let slot = match self.claim() {
            Some(s) => s,
            None => {
                let c = new_chunk()?.as_ptr();
                // SAFETY: the provider handed us memory for a chunk, which nobody else knows.
                unsafe { c.write(Chunk::new()) };
                // SAFETY: ours until published below.
                let chunk = unsafe { &*c };
                chunk.slots[0].word.store(CLAIMED, Ordering::Relaxed);
                let mut head = self.head.load(Ordering::Relaxed);
                loop {
                    chunk.next.store(head, Ordering::Relaxed);
                    match self.head.compare_exchange_weak(head, c, Ordering::Release, Ordering::Relaxed) {
                        Ok(_) => break,
                        Err(h) => head = h,
                    }
                }
                &chunk.slots[0]
            }
        };
        slot.shrinker.with_mut(|p| {
            // SAFETY: the slot is CLAIMED by us: nobody else reads or writes the pointer.
            unsafe { *p = Some(shrinker) }
        });
        slot.deferred.store(0, Ordering::Relaxed);
        slot.last_freeable.store(0, Ordering::Relaxed);
        slot.calls.store(0, Ordering::Relaxed);
        slot.freed.store(0, Ordering::Relaxed);
        slot.skipped.store(0, Ordering::Relaxed);
        // CLAIMED has no users (`get` adds users only to LIVE slots).
        slot.word.store(LIVE, Ordering::Release);
        Some(slot)
    }

    /// A FREE slot, claimed.
    fn claim(&self) -> Option<&Slot> {
        self.chunks().flat_map(|c| c.slots.iter()).find(|s| {
            s.word.load(Ordering::Relaxed) == FREE
                && s.word.compare_exchange(FREE, CLAIMED, Ordering::Acquire, Ordering::Relaxed).is_ok()
        })
    }

    /// Unregisters the shrinker of `slot`, waiting for every call in flight (`wait(word, value)`
    /// sleeps while `word == value`). When it returns, the shrinker is never called again.
    pub fn unregister(&self, slot: &Slot, wait: impl Fn(&AtomicU32, u32)) {
        let mut w = slot.word.load(Ordering::Relaxed);
        loop {
            debug_assert_eq!(w & STATE, LIVE, "unregistering a slot that is not live");
            match slot.word.compare_exchange_weak(
                w,
                (w & !STATE) | DYING,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(x) => w = x,
            }
        }
        loop {
            let w = slot.word.load(Ordering::Acquire);
            if w == DYING {
                break;
            }
            wait(&slot.word, w);
        }
        slot.shrinker.with_mut(|p| {
            // SAFETY: DYING with no users: nobody reads the pointer any more.
            unsafe { *p = None }
        });
        slot.word.store(FREE, Ordering::Release);
    }

    /// Calls `f` with every live shrinker, holding it for the duration of the call. Never
    /// allocates; safe against concurrent (un)registration.
    pub fn for_each(&self, wake: impl Fn(&AtomicU32), mut f: impl FnMut(&Slot, &dyn Shrinker)) {
        for chunk in self.chunks() {
            for slot in &chunk.slots {
                if slot.word.load(Ordering::Relaxed) & STATE != LIVE || !slot.get() {
                    continue;
                }
                // SAFETY: we hold a user reference: the shrinker stays valid until `put`.
                f(slot, unsafe { slot.shrinker().as_ref() });
                slot.put(&wake);
            }
        }
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::super::shrinker::{ScanResult, ShrinkControl};
    use super::*;
    use crate::gfp::{Gfp, ReclaimClass};
    use loom::sync::atomic::AtomicBool;
    use loom::thread;
    use std::boxed::Box;

    /// A shrinker that notices being called after its unregistration returned.
    struct Probe {
        gone: AtomicBool,
        calls: AtomicUsize,
    }

    impl Shrinker for Probe {
        fn class(&self) -> ReclaimClass {
            ReclaimClass::Other
        }
        fn count(&self, _: &ShrinkControl) -> usize {
            assert!(!self.gone.load(Ordering::SeqCst), "called after unregister returned");
            self.calls.fetch_add(1, Ordering::SeqCst);
            1
        }
        fn scan(&self, _: &mut ShrinkControl) -> ScanResult {
            ScanResult::Stop
        }
    }

    /// Leaked, like the registry's chunks: the model threads share `'static` references.
    fn probe() -> &'static Probe {
        Box::leak(Box::new(Probe { gone: AtomicBool::new(false), calls: AtomicUsize::new(0) }))
    }

    fn chunk() -> Option<NonNull<Chunk>> {
        NonNull::new(Box::into_raw(Box::new(core::mem::MaybeUninit::<Chunk>::uninit())).cast())
    }

    fn walk(reg: &Registry) -> usize {
        let mut n = 0;
        reg.for_each(
            |_| {},
            |_, s| {
                s.count(&ShrinkControl::new(Gfp::KERNEL, 1));
                n += 1;
            },
        );
        n
    }

    /// A walker racing with unregistration never calls the shrinker after `unregister` returns,
    /// and `unregister` waits for a call in flight (loom also checks the pointer is never read
    /// while written).
    #[test]
    fn unregister_waits_for_calls_in_flight() {
        loom::model(|| {
            let reg: &'static Registry = Box::leak(Box::new(Registry::new()));
            let p = probe();
            // SAFETY: the probe is leaked: it outlives the registration.
            let slot = unsafe { reg.register(NonNull::from(p as &dyn Shrinker), chunk) }.unwrap();
            let walker = thread::spawn(move || walk(reg));
            reg.unregister(slot, |_, _| loom::thread::yield_now());
            p.gone.store(true, Ordering::SeqCst);
            let seen = walker.join().unwrap();
            assert_eq!(p.calls.load(Ordering::SeqCst), seen);
            assert!(seen <= 1);
        });
    }

    /// Two threads register at once while a walker walks: they get distinct slots, and the
    /// walker sees only fully registered shrinkers.
    #[test]
    fn concurrent_registration() {
        loom::model(|| {
            let reg: &'static Registry = Box::leak(Box::new(Registry::new()));
            let (a, b) = (probe(), probe());
            let t = thread::spawn(move || {
                // SAFETY: the probe is leaked: it outlives the registration.
                unsafe { reg.register(NonNull::from(a as &dyn Shrinker), chunk) }.unwrap() as *const Slot
                    as usize
            });
            let walker = thread::spawn(move || walk(reg));
            // SAFETY: as above.
            let sb = unsafe { reg.register(NonNull::from(b as &dyn Shrinker), chunk) }.unwrap() as *const Slot
                as usize;
            let sa = t.join().unwrap();
            assert_ne!(sa, sb);
            assert!(walker.join().unwrap() <= 2);
            assert_eq!(walk(reg), 2);
        });
    }
}
