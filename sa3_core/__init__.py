"""sa3_core: Stable Audio 3 without a host. The official package's top level, under the same names::

    from sa3_core import StableAudioModel, AutoencoderModel   # as `from stable_audio_3 import ...`

Imported on first use, so that ``import sa3_core.<module>`` and ``python -m sa3_core --help`` stay light.
"""

__all__ = ["AutoencoderModel", "StableAudioModel"]


def __getattr__(name: str):
    if name == "StableAudioModel":
        from .pipeline import StableAudioModel

        return StableAudioModel
    if name == "AutoencoderModel":
        from .autoencoder import AutoencoderModel

        return AutoencoderModel
    raise AttributeError(f"module 'sa3_core' has no attribute {name!r}")
