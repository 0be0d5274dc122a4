//! Goertzel filter bank over the DTMF frequencies and their talk-off guards.
