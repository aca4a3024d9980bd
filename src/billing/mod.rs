//! Money and metering: pricing, the prepaid ledger (embedded mode), the Redis credit bank and
//! its wiring (cluster mode), and the usage event every request yields.

pub mod chargelog;
pub mod cluster;
pub mod entry;
pub mod fleet;
pub mod handover;
pub mod hold;
pub mod ledger;
pub mod pricing;
pub mod usage;
