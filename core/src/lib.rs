//! wharf-core: Wharf's object model, store with watch, controller runtime, scheduler, node
//! agent, and the backend traits with their simulated implementations.
//!
//! Everything here is portable: no Linux-only syscalls and no root needed, so the logic is
//! tested under tokio's paused clock with simulated backends.

pub mod admission;
pub mod backend;
pub mod clock;
pub mod cluster;
pub mod controller;
pub mod controllers;
pub mod manifest;
pub mod node;
pub mod object;
pub mod pod_metrics;
pub mod probe;
pub mod quantity;
pub mod scheduler;
pub mod sim;
pub mod store;
pub mod volume;

pub use clock::Clock;
pub use object::{Kind, Object, Resource, Typed};
pub use store::{Api, Store, StoreError};
