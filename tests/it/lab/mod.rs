//! A simulated internet on one machine: network namespaces joined by links, routers
//! that source-NAT a LAN, and `ww` processes running inside. Needs root (CI runs as
//! root); tests that use it are skipped, saying why, elsewhere.

pub mod link;
