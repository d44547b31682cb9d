//! CNI runtime for real plugins and a native bridge network with IPAM and port mapping.
