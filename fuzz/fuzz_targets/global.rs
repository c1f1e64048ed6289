//! `global`: this fuzz binary runs on ctxalloc as its global allocator — libFuzzer's own
//! allocations and the Rust runtime's included — and turns the input into a workload of
//! `Vec`s, `String`s, `Box`es and a `BTreeMap` growing, shrinking and moving between two
//! threads inside random scopes. With `cfg(fuzzing)` (cargo fuzz), ctxalloc poisons for
//! AddressSanitizer every block it holds freed (and the bytes of a live block past its size)
//! until it hands it out again, so a use after free or a small overflow — by the workload, the
//! runtime or the allocator itself — is caught at the access.

#![no_main]

use ctxalloc_fuzz::Input;
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;

/// ctxalloc itself poisons what it holds under `cfg(fuzzing)` (its `track` module): this
/// binary's allocator is plain `CtxAlloc`.
#[global_allocator]
static GLOBAL: ctxalloc::CtxAlloc = ctxalloc::CtxAlloc::new();

const SCOPES: [ctxalloc::Gfp; 4] =
    [ctxalloc::Gfp::KERNEL, ctxalloc::Gfp::NOFS, ctxalloc::Gfp::NOIO, ctxalloc::Gfp::NORECLAIM];

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let mut vecs: Vec<Vec<u32>> = Vec::new();
    let mut strings: Vec<String> = Vec::new();
    let mut map: BTreeMap<u16, Box<[u8]>> = BTreeMap::new();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u32>>();
    let consumer = std::thread::spawn(move || {
        let mut sum = 0u64;
        for v in rx {
            assert!(
                v.iter().enumerate().all(|(i, &x)| x == v.len() as u32 ^ i as u32),
                "a vector changed in flight"
            );
            sum += v.len() as u64;
        }
        sum
    });
    let mut sent = 0u64;
    while !input.is_empty() {
        let _scope = ctxalloc::scope(SCOPES[usize::from(input.byte()) % SCOPES.len()]);
        match input.byte() % 8 {
            0 => {
                let n = usize::from(input.byte()) << (input.byte() % 10);
                vecs.push((0..n as u32).map(|i| n as u32 ^ i).collect());
            }
            1 => {
                if let Some(v) = vecs.pop() {
                    sent += v.len() as u64;
                    tx.send(v).unwrap();
                }
            }
            2 => {
                let k = usize::from(input.byte());
                if !vecs.is_empty() {
                    let i = k % vecs.len();
                    let v = &mut vecs[i];
                    let n = v.len();
                    let extra = usize::from(input.byte()) * 7;
                    v.extend((n..n + extra).map(|j| j as u32));
                    v.truncate(n);
                    v.shrink_to_fit();
                    assert!(v.iter().enumerate().all(|(i, &x)| x == n as u32 ^ i as u32));
                }
            }
            3 => {
                let s = "ctxalloc".repeat(usize::from(input.byte()));
                strings.push(format!("{s}{}", strings.len()));
            }
            4 => {
                let k = u16::from(input.byte()) << 4 | u16::from(input.byte() % 16);
                let len = usize::from(input.byte()) * usize::from(input.byte() % 64 + 1);
                map.insert(k, vec![k as u8; len].into_boxed_slice());
            }
            5 => {
                let k = u16::from(input.byte()) << 4;
                let keys: Vec<u16> = map.range(k..).take(4).map(|(&k, _)| k).collect();
                for k in keys {
                    let b = map.remove(&k).unwrap();
                    assert!(b.iter().all(|&x| x == k as u8), "a map value changed");
                }
            }
            6 => {
                strings.retain(|s| s.len() % 3 != 0);
                strings.shrink_to_fit();
            }
            _ => {
                vecs.clear();
                if input.byte() % 4 == 0 {
                    ctxalloc::trim();
                }
            }
        }
    }
    drop(tx);
    assert_eq!(consumer.join().unwrap(), sent);
    assert_eq!(ctxalloc::current(), ctxalloc::Gfp::KERNEL);
});
