//! The daemon: one long-running process serving every transfer of a machine over a local API.

pub mod client;
