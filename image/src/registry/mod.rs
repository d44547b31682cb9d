//! Pulling from OCI distribution / Docker Registry v2 registries.

mod auth;
mod client;
mod pull;

pub use auth::{default_docker_config, load_docker_config, Challenge, RegistryAuth};
pub use client::{RegistryClient, RegistryConfig, RetryPolicy, MAX_MANIFEST_BYTES};
pub use pull::{pull, PullOptions};
