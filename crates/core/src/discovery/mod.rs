//! Finding a keynode's address by node id on the BitTorrent mainline DHT (BEP 5 and BEP 44).

pub mod record;
mod service;

pub use service::{
    discovery_off, resolve_bootstrap, start_for_proxy, validate, AddressSink, Discovery,
    DiscoveryOptions, Found, LOOKUP_TIME,
};
