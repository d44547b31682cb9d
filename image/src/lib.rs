//! OCI image store: registry pull, layout import/export, layer unpacking.
//!
//! The store lives under one directory:
//!
//! ```text
//! <root>/blobs/sha256/<hex>   content-addressed blobs (manifests, configs, layers)
//! <root>/ingest/              blobs being written (renamed into blobs/ once verified)
//! <root>/snapshots/<hex>/     one unpacked layer per diff id, shared by every image
//! <root>/images.json          image records, tags and leases
//! ```

pub mod blobs;
pub mod build;
pub mod digest;
pub mod error;
pub mod layout;
pub mod reference;
pub mod registry;
pub mod service;
pub mod snapshot;
pub mod spec;
pub mod store;
pub mod unpack;

pub use digest::Digest;
pub use error::{ImageError, Result};
pub use reference::Reference;
pub use service::ImageStoreService;
pub use store::{Image, ImageStore};
