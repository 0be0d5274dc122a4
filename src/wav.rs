//! WAV input/output for the offline tools: 8 kHz mono PCM16 or G.711 in, PCM16 out.
