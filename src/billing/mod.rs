//! Money and metering. This slice: the usage event every request yields and its batched
//! writer. Pricing, reservations and the ledger build on these events.

pub mod cluster;
pub mod ledger;
pub mod pricing;
pub mod usage;
