//! Native Linux container runtime: namespaces, mounts, cgroups, and a runc-compatible CLI.
//!
//! The crate has three layers:
//!
//! - the **engine** ([`Engine`]): OCI lifecycle verbs over a state directory
//!   (default `/run/wharf`), built on [`spec`] (bundle loading), [`plan`] (every decision
//!   made before the fork), `init` (the forked container process), [`rootfs`] and
//!   [`cgroup`];
//! - the **monitor** ([`monitor`]): one small single-threaded process per node and
//!   runtime root that forks containers, reaps them, records exit codes and streams
//!   events, so the containers outlive the program that asked for them;
//! - the **client** ([`LinuxRuntime`]), the async API an embedding program uses, which
//!   implements wharf-core's `ContainerRuntime`.
//!
//! The `wharf-runc` binary exposes the engine with runc's command line.

pub mod attach;
pub mod caps;
pub mod cgroup;
pub mod client;
pub mod container;
pub mod error;
pub mod init;
pub mod logs;
pub mod monitor;
pub mod pin;
pub mod plan;
pub mod protocol;
pub mod pty;
pub mod rootfs;
pub mod runtime;
pub mod seccomp;
pub mod session;
pub mod spec;
pub mod state;
pub mod stdio;
pub mod sys;

pub use container::{ContainerState, CreateOptions, Engine};
pub use error::{Error, Result};
pub use runtime::{LinuxRuntime, LinuxRuntimeOptions};
pub use spec::Bundle;
pub use state::{ExitInfo, Status, DEFAULT_ROOT};
