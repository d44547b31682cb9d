//! The CSI v1 wire types and gRPC services (package `csi.v1`, spec 1.12), generated at build
//! time from `proto/csi.proto`.
//!
//! Field names follow the specification; see it for their meaning.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("csi.v1");
