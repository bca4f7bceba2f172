//! The `keynet` command line, and `keynet-relay` (its relay alone): a thin layer over
//! keynet-core that parses flags and config files, starts, prints where things listen, and stops
//! cleanly on SIGINT/SIGTERM. No logic of its own that the JS classes lack.

pub mod args;
pub mod config;
pub mod control;
pub mod identity;
pub mod logging;
pub mod proxies;
pub mod relay;
pub mod signal;
