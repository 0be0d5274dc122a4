//! Payment sessions, card capture and the sealed vault. Sans-IO except the Redis store.
