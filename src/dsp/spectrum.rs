//! FFT (rustfft) analysis for the auditor's `scan`: a decoder independent of the Goertzel
//! detector, and a sensitive residue scanner that reports any fragment of dual-tone energy.
