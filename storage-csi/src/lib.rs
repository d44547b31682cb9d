//! CSI v1 client for any driver and a built-in hostpath CSI driver.

pub mod proto;
