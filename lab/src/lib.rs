//! `lab`: a lab cluster for k3s-autoscaler — the part of the Kubernetes API that the autoscaler and
//! `kubectl` use, its controllers, and a node agent that worker containers run. What kwok is to
//! cluster-autoscaler: try and test everything without a real cluster.
//!
//! Entry points:
//! - [`server::LabServer::start`]`(`[`server::ServeOptions`]`)` → a running server with
//!   `.addr()`, `.url()`, `.kubeconfig_path()`, `.store()` and `.shutdown()` (`autoscaler lab serve`).
//! - [`agent::run`]`(client, `[`agent::AgentOptions`]`, shutdown)` → the node agent
//!   (`autoscaler agent`, `autoscaler lab node`).
//! - [`cli`]: the clap commands the `autoscaler` binary mounts.
//!
//! The map:
//! - [`resources`]: the kinds served (group, version, plural, scope) — one table for everything.
//! - [`store`]: objects as JSON, one resourceVersion counter, the change history watches replay.
//! - [`api`]: the HTTP side: [`api::path`] decodes paths, [`api::discovery`], [`api::verbs`] (get,
//!   list, create, update, patch, delete, eviction, scale), [`api::watch`], [`api::table`] (what
//!   `kubectl get` prints), [`api::status`] (errors as `Status`), [`api::openapi`] (the minimal
//!   OpenAPI v3 that lets kubectl validate on the server), [`api::metrics`] (`metrics.k8s.io`
//!   computed from the pods' declared usage).
//! - [`selectors`] (label, node and field selectors), [`patch`] (merge, strategic merge, JSON patch),
//!   [`defaults`] (defaulting and validation on create), [`disruption`] (PDB arithmetic).
//! - [`controllers`]: scheduler, Deployment and ReplicaSet controllers, node lifecycle, garbage
//!   collection, PDB status — level-triggered passes run after every change.
//! - [`agent`]: registration, heartbeats, pod status, and real CPU/memory load ([`agent::load`]).
//! - [`objects`], [`time`], [`kubeconfig`]: small shared helpers (quantities come from the
//!   workspace's `primitives` crate).

pub mod agent;
pub mod api;
pub mod cli;
pub mod controllers;
pub mod defaults;
pub mod disruption;
pub mod kubeconfig;
pub mod objects;
pub mod patch;
pub mod resources;
pub mod selectors;
pub mod server;
pub mod store;
pub mod time;
pub mod tls;

pub use agent::AgentOptions;
pub use server::{LabServer, ServeOptions};
