"""Embedding backends behind one interface, and the one factory that picks one from settings."""

from mess.embedder.backends.base import EmbeddingBackend, ModelLoadError
from mess.embedder.config import Settings


def build_backend(settings: Settings) -> EmbeddingBackend:
    """The configured backend, loaded and ready; raises ModelLoadError when it cannot be."""
    if settings.backend == "dsp":
        from mess.embedder.backends.dsp import DspBackend, DspParameters

        try:
            if settings.dsp_weights is None:
                return DspBackend()
            return DspBackend(DspParameters(weights=dict(settings.dsp_weights)))
        except ValueError as exc:
            raise ModelLoadError(f"invalid DSP settings: {exc}") from exc
    # torch and transformers are imported only when MERT is asked for: the
    # DSP default then starts in a fraction of the time and memory.
    from mess.embedder.backends.mert import MertBackend

    if settings.model_dir is None:
        raise ModelLoadError("the mert backend needs MESS_EMBEDDER_MODEL_DIR")
    return MertBackend(
        settings.model_dir,
        device=settings.device,
        dtype=settings.dtype,
        layers=settings.layers,
        layer_weights=settings.layer_weights,
        name=settings.model_name,
    )


__all__ = ["EmbeddingBackend", "ModelLoadError", "build_backend"]
