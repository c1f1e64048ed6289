//! The remote-free list of a slab page: the one structure other threads write.
//!
//! Free-list sharding (mimalloc): a page has two free lists. `free` belongs to the owning
//! thread; every other thread pushes onto this one with a compare-and-swap, so a cross-thread
//! free never takes a lock. The owner takes the whole list with one swap on its slow path and
//! merges it.
//!
//! The word also carries the page's *abandoned* state (bit 0; blocks are 16-byte aligned): when
//! a thread exits, the page's list is taken and the bit set in the same swap. A pusher that sees
//! the bit does not push; it takes the abandoned-page path (under the abandoned-list lock), so no
//! block can be pushed onto a page that nobody will ever collect.
//!
//! ## Ordering
//!
//! * push: the block's `next` is written, then the CAS publishes the block with Release; a failed
//!   CAS retries with the fresh head (Relaxed — the next attempt's Release covers it).
//! * take / abandon: swap with Acquire, so every `next` written before the matching pushes is
//!   visible when the owner walks the list.
//! * adopt: store with Release, under the abandoned-list lock (which orders it with the pushers
//!   that saw the abandoned bit and wait for that lock).
//!
//! A pusher touches the page only *before* its CAS succeeds; after it, the owner may collect the
//! block, find the page empty and give its memory back.

use crate::sync::{AtomicPtr, Ordering, RawCell};
use core::ptr;

/// A free block: the first word of free memory links to the next free block.
#[repr(transparent)]
pub struct Block {
    next: RawCell<*mut Block>,
}

impl Block {
    /// The next block.
    ///
    /// # Safety
    /// `b` points to a free block whose `next` was written and is not being written concurrently.
    #[inline(always)]
    pub unsafe fn next(b: *mut Block) -> *mut Block {
        // SAFETY: per the contract, `b` is a readable free block.
        let stored = unsafe { (*b).next.with(|p| *p) };
        #[cfg(all(feature = "hardened", not(all(loom, test))))]
        let stored = crate::hardened::decode(stored);
        stored
    }

    /// Links `b` to `next`.
    ///
    /// # Safety
    /// `b` points to a free block that this thread may write.
    #[inline(always)]
    pub unsafe fn set_next(b: *mut Block, next: *mut Block) {
        #[cfg(all(feature = "hardened", not(all(loom, test))))]
        let next = crate::hardened::encode(next);
        // SAFETY: per the contract, `b` is a writable free block.
        unsafe { (*b).next.with_mut(|p| *p = next) }
    }

    /// Clears `b`'s link word (to 0, whatever the encoding): a block handed out under
    /// `hardened` starts so, which tells a live block from a free one.
    ///
    /// # Safety
    /// As [`set_next`](Self::set_next).
    #[cfg(all(feature = "hardened", not(all(loom, test))))]
    #[inline(always)]
    pub unsafe fn clear(b: *mut Block) {
        // SAFETY: per the contract, `b` is a writable block.
        unsafe { (*b).next.with_mut(|p| *p = ptr::null_mut()) }
    }

    /// A block for tests and models: `next` is null.
    #[cfg(all(loom, test))]
    pub fn new() -> Block {
        Block { next: RawCell::new(ptr::null_mut()) }
    }
}

/// The page was abandoned by its owner's thread: bit 0 of the list word.
const ABANDONED: usize = 1;

/// The word of an abandoned, empty list. Never dereferenced.
#[inline(always)]
fn abandoned_word() -> *mut Block {
    ptr::without_provenance_mut(ABANDONED)
}

/// The blocks of a list word, without the abandoned bit (provenance kept).
#[inline(always)]
fn blocks(word: *mut Block) -> *mut Block {
    word.map_addr(|a| a & !ABANDONED)
}

/// The atomic remote-free list of one page. See the module documentation.
pub struct RemoteList {
    /// Head block, with bit 0 set when abandoned. Pushed by any thread (CAS, Release); taken by
    /// the owner (swap, Acquire); the abandoned bit is set by the exiting owner and cleared by an
    /// adopter under the abandoned-list lock.
    word: AtomicPtr<Block>,
}

/// What a push found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Push {
    /// The block is on the list; the caller must not touch the page again.
    Done,
    /// The page is abandoned; nothing was pushed.
    Abandoned,
}

impl Default for RemoteList {
    fn default() -> Self {
        Self::new()
    }
}

impl RemoteList {
    /// An empty, owned list.
    #[cfg(not(all(loom, test)))]
    pub const fn new() -> RemoteList {
        RemoteList { word: AtomicPtr::new(ptr::null_mut()) }
    }

    /// An empty, owned list.
    #[cfg(all(loom, test))]
    pub fn new() -> RemoteList {
        RemoteList { word: AtomicPtr::new(ptr::null_mut()) }
    }

    /// Pushes `block` unless the page is abandoned.
    ///
    /// # Safety
    /// `block` is a free block of this page that the caller owns.
    #[inline]
    pub unsafe fn push(&self, block: *mut Block) -> Push {
        let mut head = self.word.load(Ordering::Relaxed);
        loop {
            if head.addr() & ABANDONED != 0 {
                return Push::Abandoned;
            }
            // SAFETY: the caller owns `block` until the CAS below publishes it.
            unsafe { Block::set_next(block, head) };
            match self.word.compare_exchange_weak(head, block, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return Push::Done,
                Err(h) => head = h,
            }
        }
    }

    /// Takes every pushed block (owner only). The page stays owned.
    #[inline]
    pub fn take(&self) -> *mut Block {
        if self.word.load(Ordering::Relaxed).is_null() {
            return ptr::null_mut();
        }
        blocks(self.word.swap(ptr::null_mut(), Ordering::Acquire))
    }

    /// Whether anything was pushed (a hint: it may change at any time).
    /// The first block, without taking the list: for the owner, the only thread that takes,
    /// so the blocks reachable from it stay on the list while it looks.
    #[cfg(all(feature = "hardened", not(all(loom, test))))]
    #[inline]
    pub fn peek(&self) -> *mut Block {
        blocks(self.word.load(Ordering::Acquire))
    }

    #[inline]
    pub fn has_blocks(&self) -> bool {
        !blocks(self.word.load(Ordering::Relaxed)).is_null()
    }

    /// Marks the page abandoned and takes every pushed block (the exiting owner).
    #[inline]
    pub fn abandon(&self) -> *mut Block {
        blocks(self.word.swap(abandoned_word(), Ordering::Acquire))
    }

    /// Whether the page is abandoned.
    #[inline]
    pub fn is_abandoned(&self) -> bool {
        self.word.load(Ordering::Acquire).addr() & ABANDONED != 0
    }

    /// Clears the abandoned state: the page has a new owner. Called under the abandoned-list lock;
    /// the list is empty (pushers do not push onto an abandoned page).
    #[inline]
    pub fn adopt(&self) {
        debug_assert_eq!(self.word.load(Ordering::Relaxed).addr(), ABANDONED);
        self.word.store(ptr::null_mut(), Ordering::Release);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;
    use std::boxed::Box;
    use std::vec;
    use std::vec::Vec;

    fn blocks(n: usize) -> Vec<usize> {
        (0..n).map(|_| Box::into_raw(Box::new(Block::new())) as usize).collect()
    }

    fn collect(head: *mut Block, out: &mut Vec<usize>) {
        let mut b = head;
        while !b.is_null() {
            out.push(b as usize);
            // SAFETY: a block of the collected list, boxed by the test and still live.
            b = unsafe { Block::next(b) };
        }
    }

    fn free_all(v: &[usize]) {
        for &b in v {
            // SAFETY: each block was boxed by the test and is freed once.
            drop(unsafe { Box::from_raw(b as *mut Block) });
        }
    }

    /// Two threads push while the owner takes: every block is seen exactly once, and every
    /// `next` the owner reads was written before it (loom checks the cells for races).
    #[test]
    fn pushes_and_takes_lose_nothing() {
        loom::model(|| {
            let list = Arc::new(RemoteList::new());
            let b = blocks(3);
            let pushers: Vec<_> = [vec![b[0], b[1]], vec![b[2]]]
                .into_iter()
                .map(|mine| {
                    let list = list.clone();
                    thread::spawn(move || {
                        for blk in mine {
                            // SAFETY: a live block this thread owns and gives up.
                            assert_eq!(unsafe { list.push(blk as *mut Block) }, Push::Done);
                        }
                    })
                })
                .collect();
            let mut seen = Vec::new();
            collect(list.take(), &mut seen);
            for p in pushers {
                p.join().unwrap();
            }
            collect(list.take(), &mut seen);
            seen.sort();
            let mut want = b.clone();
            want.sort();
            assert_eq!(seen, want);
            free_all(&b);
        });
    }

    /// A push racing with abandonment either lands before the abandon swap (and is taken by it)
    /// or sees the abandoned bit and pushes nothing: no block is stranded.
    #[test]
    fn abandon_strands_nothing() {
        loom::model(|| {
            let list = Arc::new(RemoteList::new());
            let b = blocks(2);
            let l2 = list.clone();
            let (b0, b1) = (b[0], b[1]);
            let pusher = thread::spawn(move || {
                // SAFETY: live blocks this thread owns and gives up.
                let r0 = unsafe { l2.push(b0 as *mut Block) };
                // SAFETY: as above.
                let r1 = unsafe { l2.push(b1 as *mut Block) };
                (r0, r1)
            });
            let mut taken = Vec::new();
            collect(list.abandon(), &mut taken);
            let (r0, r1) = pusher.join().unwrap();
            let pushed: Vec<usize> =
                [(r0, b0), (r1, b1)].into_iter().filter(|(r, _)| *r == Push::Done).map(|(_, b)| b).collect();
            // Nothing was pushed after the abandon: the list holds only the abandoned bit.
            assert!(list.is_abandoned());
            assert!(!list.has_blocks());
            taken.sort();
            let mut pushed = pushed;
            pushed.sort();
            assert_eq!(taken, pushed);
            // A push that lost the race saw the bit, so it will go to the locked path.
            if r0 == Push::Abandoned {
                assert_eq!(r1, Push::Abandoned);
            }
            free_all(&b);
        });
    }

    /// The whole hand-over: the owner abandons (under the abandoned-list lock, modelled by a
    /// mutex), an adopter adopts under the lock, and a pusher that sees the abandoned bit takes
    /// the lock: if the page is still abandoned it frees under the lock, else it pushes again.
    /// Every block ends up exactly once in: the abandon swap, the locked frees, or the adopter's
    /// take.
    #[test]
    fn abandon_adopt_and_locked_frees_account_for_every_block() {
        loom::model(|| {
            let list = Arc::new(RemoteList::new());
            let lock = Arc::new(loom::sync::Mutex::new(Vec::<usize>::new()));
            let b = blocks(2);
            let (l2, lk2, b0, b1) = (list.clone(), lock.clone(), b[0], b[1]);
            let pusher = thread::spawn(move || {
                for blk in [b0, b1] {
                    loop {
                        // SAFETY: a live block this thread owns and gives up.
                        if unsafe { l2.push(blk as *mut Block) } == Push::Done {
                            break;
                        }
                        let mut locked = lk2.lock().unwrap();
                        if l2.is_abandoned() {
                            locked.push(blk); // freed under the lock
                            break;
                        }
                    }
                }
            });
            let mut seen = Vec::new();
            {
                let _g = lock.lock().unwrap();
                collect(list.abandon(), &mut seen);
            }
            {
                let _g = lock.lock().unwrap();
                assert!(list.is_abandoned() && !list.has_blocks(), "nothing pushed onto an abandoned page");
                list.adopt();
            }
            pusher.join().unwrap();
            collect(list.take(), &mut seen);
            seen.extend(lock.lock().unwrap().iter().copied());
            seen.sort();
            let mut want = b.clone();
            want.sort();
            assert_eq!(seen, want);
            free_all(&b);
        });
    }
}
