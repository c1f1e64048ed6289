//! Many threads allocating and freeing each other's blocks: producer/consumer and random
//! exchange, over a million operations, every block's contents verified when freed.

use ctxalloc_tests::{Block, Rng};
use std::alloc::Layout;
use std::sync::{mpsc, Arc, Mutex};
use std::thread;

#[global_allocator]
static GLOBAL: ctxalloc::CtxAlloc = ctxalloc::CtxAlloc::new();

const THREADS: usize = 4;

#[test]
fn random_exchange_between_four_threads() {
    const OPS_PER_THREAD: u64 = 300_000;
    let mailboxes: Arc<Vec<Mutex<Vec<Block>>>> =
        Arc::new((0..THREADS).map(|_| Mutex::new(Vec::new())).collect());
    let handles: Vec<_> = (0..THREADS)
        .map(|me| {
            let mb = mailboxes.clone();
            thread::spawn(move || {
                let mut rng = Rng::new(me as u64 + 1);
                let mut own: Vec<Block> = Vec::new();
                for op in 0..OPS_PER_THREAD {
                    match rng.below(10) {
                        0..=3 => {
                            let size = rng.size(256 << 10);
                            let align = if rng.below(20) == 0 { 1 << rng.below(13) } else { 8 };
                            own.push(Block::new(Layout::from_size_align(size, align).unwrap(), op));
                        }
                        4..=5 => {
                            // Hand a block to a random thread: it will be freed remotely.
                            if let Some(b) = own.pop() {
                                let to = rng.below(THREADS as u64) as usize;
                                mb[to].lock().unwrap().push(b);
                            }
                        }
                        6..=7 => {
                            let got = std::mem::take(&mut *mb[me].lock().unwrap());
                            drop(got); // verified and freed here, allocated elsewhere
                        }
                        _ => {
                            if !own.is_empty() {
                                let i = rng.below(own.len() as u64) as usize;
                                drop(own.swap_remove(i));
                            }
                        }
                    }
                }
                own.iter().for_each(Block::verify);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    for m in mailboxes.iter() {
        m.lock().unwrap().iter().for_each(Block::verify);
    }
}

#[test]
fn producers_allocate_consumers_free() {
    const PER_PRODUCER: u64 = 250_000;
    let (tx, rx) = mpsc::sync_channel::<Vec<Block>>(64);
    let rx = Arc::new(Mutex::new(rx));
    let producers: Vec<_> = (0..THREADS / 2)
        .map(|p| {
            let tx = tx.clone();
            thread::spawn(move || {
                let mut rng = Rng::new(100 + p as u64);
                let mut batch = Vec::with_capacity(64);
                for i in 0..PER_PRODUCER {
                    let size = 1 + rng.below(1000) as usize;
                    batch.push(Block::new(Layout::from_size_align(size, 8).unwrap(), i));
                    if batch.len() == 64 {
                        tx.send(std::mem::replace(&mut batch, Vec::with_capacity(64))).unwrap();
                    }
                }
                tx.send(batch).unwrap();
            })
        })
        .collect();
    drop(tx);
    let consumers: Vec<_> = (0..THREADS / 2)
        .map(|_| {
            let rx = rx.clone();
            thread::spawn(move || {
                let mut freed = 0u64;
                loop {
                    let batch = rx.lock().unwrap().recv();
                    match batch {
                        Ok(b) => {
                            freed += b.len() as u64;
                            drop(b);
                        }
                        Err(_) => return freed,
                    }
                }
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    let freed: u64 = consumers.into_iter().map(|c| c.join().unwrap()).sum();
    assert_eq!(freed, PER_PRODUCER * (THREADS as u64 / 2));
}
