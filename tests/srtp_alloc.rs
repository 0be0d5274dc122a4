//! How many heap allocations one SRTP packet costs through `rtp::srtp`'s contexts: counted
//! with a global allocator, so it is its own test binary. rtc-srtp returns each packet in a
//! new buffer; this pins that figure so a crate update that changes it is noticed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use tonewall::rtp::srtp::{InboundSrtp, OutboundSrtp, SrtpMasterKey, SrtpSuite};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn one_allocation_per_packet_each_way() {
    for suite in SrtpSuite::ALL {
        let key = SrtpMasterKey::generate(suite).unwrap();
        let mut out = OutboundSrtp::new(&key).unwrap();
        let mut inb = InboundSrtp::new(&key).unwrap();
        let mut buf = [0u8; 256];
        let mut run = |seq: u16| {
            buf[0] = 0x80;
            buf[2..4].copy_from_slice(&seq.to_be_bytes());
            buf[11] = 1;
            let before = ALLOCS.load(Ordering::Relaxed);
            let n = out.protect_rtp(&mut buf, 172).unwrap();
            let mid = ALLOCS.load(Ordering::Relaxed);
            inb.unprotect_rtp(&mut buf, n).unwrap();
            let after = ALLOCS.load(Ordering::Relaxed);
            (mid - before, after - mid)
        };
        // The first packet of a stream makes the crate's per-SSRC state.
        run(1);
        for seq in 2..50 {
            assert_eq!(
                run(seq),
                (1, 1),
                "{suite}: (protect, unprotect) allocations"
            );
        }
    }
}
