"""The query service: the public read API: tracks, recommendations, audio, waveforms."""
