//! Integration tests: real `ww` processes on 127.0.0.1, real TCP and QUIC.

mod admin;
mod bench;
mod cluster;
mod cluster_deploy;
mod content;
mod dashboard;
mod dashboard_load;
mod deploy;
mod deploy_stub;
mod dialer;
mod echo;
mod failures;
mod hostile;
mod javascript;
mod lab;
mod lifecycle;
mod limits;
mod nat;
mod python;
mod startup;
mod stdio;
mod support;
mod swap;
mod wide_area;
