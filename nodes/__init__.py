"""ComfyUI nodes for Stable Audio 3: thin V3 adapters over ``sa3_core``.

Node ids, input names and widget order are public API (saved workflows store widget values by position):
never rename or reorder them; add new inputs at the end, optional.
"""

from .conditioning import SA3TextEncode
from .decode import SA3VAEDecode
from .latent import SA3EmptyLatent, SA3InitAudioEncode, SA3InpaintMask
from .loader import SA3ModelLoader
from .lora import SA3LoRAApply
from .prompt import SA3PromptBuilder
from .sampler import SA3RFSampler
from .spectrogram import SA3Spectrogram

NODES = [
    SA3ModelLoader,
    SA3LoRAApply,
    SA3TextEncode,
    SA3EmptyLatent,
    SA3InitAudioEncode,
    SA3InpaintMask,
    SA3RFSampler,
    SA3VAEDecode,
    SA3PromptBuilder,
    SA3Spectrogram,
]
