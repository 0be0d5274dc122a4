//! Pure signal processing: no I/O, no clocks. Sample offsets are the only notion of time.

pub mod dtmf;
pub mod g711;
pub mod goertzel;
pub mod mask;
pub mod spectrum;
