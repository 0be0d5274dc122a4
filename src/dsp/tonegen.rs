//! Deterministic DTMF test-signal generator with exact ground truth, for tests, benches and the
//! demo: digit, duration, pause, level in dBm0, twist, frequency offset, noise SNR, mix over audio.
