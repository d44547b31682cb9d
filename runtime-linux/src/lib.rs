//! Native Linux container runtime: namespaces, mounts, cgroups, and a runc-compatible CLI.
