//! The allocator every waconnect binary runs on: jemalloc instead of the system's.
//!
//! Why: the services allocate and free many small, short-lived buffers (HTTP heads,
//! JSON, SDK request state) on one thread and drop them on another, which glibc's
//! malloc serves slowly: in a profile of the latency bench at 500–1,000 msg/s each way,
//! malloc and free took about 15% of the process's CPU, and in alternating runs at
//! 500 msg/s each way the box fell behind on glibc (inbound p99 0.43–3.9 s in all 5 runs) where on
//! jemalloc it kept p99 within 25 ms inbound and 39 ms outbound.
//! mimalloc was as fast but held 2.3 KiB more per idle conversation in the relay bench
//! (22.7 against jemalloc's 20.4 KiB over ws); jemalloc holds about what glibc did.
//!
//! Each binary, and each bench that runs the services in its own process (latency,
//! ingress), declares it, so the figures measure what ships:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOCATOR: waconnect_shared::service::allocator::Allocator =
//!     waconnect_shared::service::allocator::Allocator;
//! ```

/// The allocator type to declare as `#[global_allocator]`.
pub use tikv_jemallocator::Jemalloc as Allocator;
