//! What a poll through `ctxalloc::scoped` costs over the bare poll, and one holding an
//! `AsyncScopedMutex` guard (the task's record then carries the lock's bits), in the same run.
//! The future polled is a counter that stays pending for ever: the figure is the scoped
//! future's own work per poll (save and restore of the word, the poll frame), nothing else.
//!
//! `cargo bench -p ctxalloc-benches --bench scoped`

use criterion::{criterion_group, criterion_main, Criterion};
use ctxalloc::{AsyncScopedMutex, Gfp};
use std::future::Future;
use std::hint::black_box;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

#[global_allocator]
static GLOBAL: ctxalloc::CtxAlloc = ctxalloc::CtxAlloc::new();

/// Pending for ever; counts its polls.
struct Spin(u64);

impl Future for Spin {
    type Output = ();
    #[inline(never)]
    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        self.0 = black_box(self.0 + 1);
        Poll::Pending
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("poll");
    let waker = Waker::noop();
    let mut cx = Context::from_waker(waker);

    let mut bare = pin!(Spin(0));
    g.bench_function("bare", |b| b.iter(|| black_box(bare.as_mut().poll(&mut cx))));

    let mut kernel = pin!(ctxalloc::scoped(Gfp::KERNEL, Spin(0)));
    g.bench_function("scoped (KERNEL)", |b| b.iter(|| black_box(kernel.as_mut().poll(&mut cx))));

    let mut scoped = pin!(ctxalloc::scoped(Gfp::NOFS, Spin(0)));
    g.bench_function("scoped (NOFS)", |b| b.iter(|| black_box(scoped.as_mut().poll(&mut cx))));

    // A task that holds a NOIO lock across its awaits: every poll also holds the lock's bits.
    let lock = AsyncScopedMutex::new(0u64, Gfp::NOIO, "bench");
    let mut holding = pin!(ctxalloc::scoped(Gfp::NOFS, async {
        let _g = lock.lock().await;
        Spin(0).await
    }));
    let _ = holding.as_mut().poll(&mut cx); // takes the lock
    g.bench_function("scoped, holding an async scoped lock", |b| {
        b.iter(|| black_box(holding.as_mut().poll(&mut cx)))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
