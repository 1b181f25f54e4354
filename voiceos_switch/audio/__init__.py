"""Audio primitives: PCM frames, resampling, pacing."""
