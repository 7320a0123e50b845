//! The daemon: one long-running process serving every transfer of a machine over a local API,
//! sharing one connection pool per store, one bandwidth limit and one cache between jobs.

pub mod api;
pub mod bandwidth;
pub mod client;
pub mod metrics;
pub mod registry;
pub mod server;
pub mod service_manager;
pub mod shared;
pub mod slots;
pub mod tcp_secrets;
pub mod tls;
pub mod token;
