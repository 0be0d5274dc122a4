//! Payment sessions, card capture and the sealed vault. Sans-IO except the Redis store.

pub mod capture;
pub mod card;
