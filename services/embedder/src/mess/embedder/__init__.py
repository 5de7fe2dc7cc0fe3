"""The embedder service: audio to vectors: decode, resample, chunk, model forward, pooling, waveform peaks."""
