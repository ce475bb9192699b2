//! The primitives every crate of k3s-autoscaler shares, each written once:
//!
//! - [`backoff`]: [`Backoff`], the exponential delay of every retry loop (bus consumers, Docker
//!   breaker, publish sinks, connects, webhooks, `events tail -f`, the lab agent) and, without
//!   jitter, of the decision core's pure pool backoff;
//! - [`quantity`]: Kubernetes resource quantities (`250m`, `2Gi`) as integers, for the lab, the
//!   Kubernetes adapters and the configuration alike.
//!
//! Pure: no I/O, no async runtime, so `handlers` can use them and keep its no-I/O rule
//! (`docs/ARCHITECTURE.md`).

pub mod backoff;
pub mod quantity;

pub use backoff::Backoff;
pub use quantity::{cpu_millis, memory_bytes, QuantityError};
