//! End-to-end test support: real Redis, real Docker and the lab cluster.
