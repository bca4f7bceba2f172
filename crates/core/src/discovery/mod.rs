//! Finding a keynode's address by node id on the BitTorrent mainline DHT (BEP 5 and BEP 44).

pub mod record;
mod service;
pub mod service_entry;
mod services;

pub use service::{
    announce_for_proxy, discovery_off, resolve_bootstrap, validate, AddressSink, Discovery,
    DiscoveryOptions, Found, Located, Reach, RecordSink, Storing, LOOKUP_TIME, RECORD_MAX_AGE,
    RECORD_SKEW, STORE_AT_ONCE, STORE_QUEUE,
};
pub(crate) use services::checked_name;
pub use services::{Member, ServiceOffer, ServiceTrust, MAX_ENTRY_AGE, MAX_OFFERS, MAX_TAGS};
