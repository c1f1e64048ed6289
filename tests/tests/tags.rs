//! Allocation tags (feature `tags`): per-tag live bytes, live blocks and calls match a model
//! of what each thread allocated, resized and freed under nested tags — frees by other
//! threads included — and the allocinfo report lists them largest first.

use ctxalloc::tags::{self, TagRow};
use ctxalloc_tests::Rng;
use std::alloc::{alloc, dealloc, realloc, Layout};
use std::sync::mpsc;

#[global_allocator]
static GLOBAL: ctxalloc::CtxAlloc = ctxalloc::CtxAlloc::new();

fn row(name: &str) -> TagRow {
    tags::rows().into_iter().find(|r| r.name == name).unwrap_or(TagRow {
        name: "",
        bytes: 0,
        live: 0,
        calls: 0,
    })
}

/// What the model expects of one tag.
#[derive(Default, Clone, Copy, Debug, PartialEq)]
struct Want {
    bytes: usize,
    live: usize,
    calls: u64,
}

const NAMES: [&str; 3] = ["model-a", "model-b", "model-c"];

#[test]
fn tag_totals_match_a_model() {
    // Blocks handed to another thread to free: (address, size, tag index).
    let (to_freer, freer_rx) = mpsc::sync_channel::<(usize, usize, usize)>(1 << 16);
    let freer = std::thread::spawn(move || {
        let mut n = 0;
        for (addr, size, _) in freer_rx {
            // SAFETY: a live block of `size` bytes, align 8, given up by its allocator.
            unsafe { dealloc(addr as *mut u8, Layout::from_size_align_unchecked(size, 8)) };
            n += 1;
        }
        n
    });
    let mut want = [Want::default(); 3];
    let workers: Vec<_> = (0..3u64)
        .map(|t| {
            let to_freer = to_freer.clone();
            std::thread::spawn(move || {
                let mut rng = Rng::new(0x7a6 + t);
                let mut want = [Want::default(); 3];
                // Live blocks: (address, size, tag index). Capacity reserved up front: the
                // model itself allocates nothing while a tag is set.
                let mut live: Vec<(usize, usize, usize)> = Vec::with_capacity(4096);
                for _ in 0..20_000 {
                    let op = rng.below(10);
                    if op < 5 || live.is_empty() {
                        // Allocate under one tag, or under two nested ones (the inner wins).
                        let outer = rng.below(3) as usize;
                        let inner = rng.below(4) as usize; // 3: no inner tag
                        let max = if rng.below(20) == 0 { 300_000 } else { 2000 };
                        let size = 1 + rng.below(max) as usize;
                        let layout = Layout::from_size_align(size, 8).unwrap();
                        let _o = tags::tag(NAMES[outer]);
                        let _i = (inner < 3).then(|| tags::tag(NAMES[inner]));
                        let k = if inner < 3 { inner } else { outer };
                        // SAFETY: a non-zero size.
                        let p = unsafe { alloc(layout) };
                        assert!(!p.is_null());
                        drop(_i);
                        drop(_o);
                        if live.len() < live.capacity() {
                            live.push((p.addr(), size, k));
                        } else {
                            // SAFETY: the block just allocated.
                            unsafe { dealloc(p, layout) };
                            want[k].calls += 1;
                            continue;
                        }
                        want[k].bytes += size;
                        want[k].live += 1;
                        want[k].calls += 1;
                    } else if op < 7 {
                        // Resize, under a different tag: the block stays with its own.
                        let i = rng.below(live.len() as u64) as usize;
                        let (addr, size, k) = live[i];
                        let new = 1 + rng.below(4000) as usize;
                        let _other = tags::tag(NAMES[(k + 1) % 3]);
                        // SAFETY: a live block of `size`, align 8.
                        let p = unsafe {
                            realloc(addr as *mut u8, Layout::from_size_align_unchecked(size, 8), new)
                        };
                        assert!(!p.is_null());
                        live[i] = (p.addr(), new, k);
                        want[k].bytes = want[k].bytes + new - size;
                    } else if op < 9 {
                        let (addr, size, k) = live.swap_remove(rng.below(live.len() as u64) as usize);
                        // SAFETY: a live block of `size`, align 8.
                        unsafe { dealloc(addr as *mut u8, Layout::from_size_align_unchecked(size, 8)) };
                        want[k].bytes -= size;
                        want[k].live -= 1;
                    } else {
                        // Another thread frees it.
                        let b = live.swap_remove(rng.below(live.len() as u64) as usize);
                        want[b.2].bytes -= b.1;
                        want[b.2].live -= 1;
                        to_freer.send(b).unwrap();
                    }
                }
                // Leave a third live, free the rest.
                while live.len() > 300 {
                    let (addr, size, k) = live.pop().unwrap();
                    // SAFETY: as above.
                    unsafe { dealloc(addr as *mut u8, Layout::from_size_align_unchecked(size, 8)) };
                    want[k].bytes -= size;
                    want[k].live -= 1;
                }
                (want, live)
            })
        })
        .collect();
    let mut kept = Vec::new();
    for w in workers {
        let (w, live) = w.join().unwrap();
        for k in 0..3 {
            want[k].bytes += w[k].bytes;
            want[k].live += w[k].live;
            want[k].calls += w[k].calls;
        }
        kept.extend(live);
    }
    drop(to_freer);
    assert!(freer.join().unwrap() > 1000);
    for (k, name) in NAMES.iter().enumerate() {
        let r = row(name);
        assert_eq!(Want { bytes: r.bytes, live: r.live, calls: r.calls }, want[k], "tag {name}");
        assert!(want[k].live > 0);
    }
    for (addr, size, _) in kept {
        // SAFETY: as above.
        unsafe { dealloc(addr as *mut u8, Layout::from_size_align_unchecked(size, 8)) };
    }
    for name in NAMES {
        assert_eq!((row(name).bytes, row(name).live), (0, 0), "tag {name} after every free");
    }
}

#[test]
fn allocinfo_lists_tags_largest_first() {
    let big = {
        let _t = tags::tag("report-big");
        vec![1u8; 300_000]
    };
    let small = {
        let _t = tags::tag("report-small");
        let _u = tags::tag("report-small"); // the same tag nested: still one tag
        vec![1u8; 3000]
    };
    let text = tags::allocinfo();
    let pos =
        |name: &str| text.lines().position(|l| l.ends_with(name)).unwrap_or_else(|| panic!("{name}: {text}"));
    assert!(pos("report-big") < pos("report-small"), "{text}");
    let line = text.lines().find(|l| l.ends_with(" report-big")).unwrap();
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols, ["300000", "1", "1", "report-big"], "{text}");
    let by_bytes: Vec<usize> =
        text.lines().skip(2).map(|l| l.split_whitespace().next().unwrap().parse().unwrap()).collect();
    assert!(by_bytes.windows(2).all(|w| w[0] >= w[1]), "sorted by bytes: {text}");
    drop((big, small));
}

#[test]
fn untagged_threads_do_not_count_and_a_tag_ends_with_its_guard() {
    let t = std::thread::spawn(|| {
        let v = vec![0u8; 5000]; // no tag on this thread
        let w = {
            let _t = tags::tag("guard-end");
            vec![0u8; 70]
        };
        let after = vec![0u8; 90]; // the tag ended
        (v, w, after)
    })
    .join()
    .unwrap();
    let r = row("guard-end");
    assert_eq!((r.bytes, r.live, r.calls), (70, 1, 1));
    drop(t);
    assert_eq!(row("guard-end").bytes, 0);
}
