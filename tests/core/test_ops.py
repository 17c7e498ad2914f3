"""Casting layers (sa3_core.ops): ComfyUI's partial-loading layout, state-dict keys, float8 weight storage."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from sa3_core import ops
from sa3_core.checkpoint import DIT_PREFIX, build_modules, load_components, module_shapes, preset_config
from sa3_core.lora import LoRAError
from sa3_core.pipeline import StableAudioModel
from tests.helpers import relative_l2
from tests.newer_comfy_ops import EAGER

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2


@pytest.mark.parametrize("variant", ["small", "medium"])
def test_every_tensor_sits_where_comfyui_can_load_it_partially(variant: str):
    """ComfyUI's ModelPatcher moves leaf modules one by one (a module whose children hold parameters is
    skipped, with its own parameters) and only modules marked comfy_cast_weights may stay offloaded. So
    every parameter and buffer of the DiT, SAME and conditioners must sit directly in a marked module."""
    for prefix, module in build_modules(preset_config(variant), device="meta").items():
        for name, sub in module.named_modules():
            own = list(sub.parameters(recurse=False)) + list(sub.buffers(recurse=False))
            if not own:
                continue
            where = f"{prefix}{name} ({type(sub).__name__})"
            assert hasattr(sub, "comfy_cast_weights"), f"{where} holds tensors but is not a casting module"
            nested = [n for n, _ in sub.named_parameters() if "." in n]
            assert not nested, f"{where} holds parameters and has children with parameters: {nested[:3]}"


# Tensors a loaded model may hold outside a casting leaf module, and why each is safe in a partial load.
OUTSIDE_CASTING_MODULES = {
    # Non-persistent RoPE buffers: transformers' forward moves inv_freq to the input's device at use
    # (checked below); original_inv_freq is only read when a dynamic RoPE rescales, which T5Gemma's does not.
    "T5GemmaRotaryEmbedding": {"inv_freq", "original_inv_freq"},
}


def uncastable_tensors(module: nn.Module) -> dict[str, str]:
    """``name -> why`` for every parameter or buffer of ``module`` that ComfyUI's partial load
    (``ModelPatcher._load_list``) could leave on the offload device uncast: one in a module that is not a
    leaf (its children hold parameters too: skipped whole), or in a leaf without ``comfy_cast_weights``."""
    found = {}
    for name, sub in module.named_modules():
        own = [n for n, _ in sub.named_parameters(recurse=False)] + [n for n, _ in sub.named_buffers(recurse=False)]
        children_params = [n for n, _ in sub.named_parameters() if "." in n]
        for tensor in own:
            where = f"{name}.{tensor}".lstrip(".")
            if children_params and tensor in dict(sub.named_parameters(recurse=False)):
                found[where] = f"{type(sub).__name__} is not a leaf (children hold {children_params[0]})"
            elif not hasattr(sub, "comfy_cast_weights") and tensor not in OUTSIDE_CASTING_MODULES.get(
                type(sub).__name__, ()
            ):
                found[where] = f"{type(sub).__name__} does not cast its weights"
    return found


@pytest.mark.parametrize("operations", ["sa3_core.ops", "comfy eager"])
def test_every_tensor_of_a_loaded_model_can_stay_offloaded(fixtures_dir: Path, operations: str):
    """The model as the ComfyUI Loader holds it, one module per ModelPatcher part (text encoder and
    conditioners, DiT, SAME), loaded through ComfyUI-style layers or our own: nothing a partial load could
    leave behind uncast. The T5Gemma encoder comes from transformers; store_weights makes its Linear,
    Embedding and norm layers casting ones."""
    ops_namespace = {"sa3_core.ops": ops.OPS, "comfy eager": EAGER}[operations]
    loaded = load_components(fixtures_dir / "tiny-small", device="cpu", dtype=torch.float32, operations=ops_namespace)
    parts = {
        "conditioners": loaded.conditioners,
        "text_encoder": loaded.text_encoder.model,
        "dit": loaded.dit,
        "autoencoder": loaded.autoencoder,
    }
    for part, module in parts.items():
        assert uncastable_tensors(module) == {}, part
    norms = [m for m in loaded.text_encoder.model.modules() if type(m).__name__ == "T5GemmaRMSNorm"]
    assert norms and all(isinstance(m, ops.GemmaRMSNorm) for m in norms)


def test_the_audit_finds_a_plain_norm_and_a_non_leaf_parameter():
    model = nn.Sequential(nn.LayerNorm(4), ops.Linear(4, 4))
    model.register_parameter("scale", nn.Parameter(torch.ones(1)))
    assert set(uncastable_tensors(model)) == {"0.weight", "0.bias", "scale"}


def test_t5gemma_rotary_buffers_move_to_the_input_device_at_use(fixtures_dir: Path):
    """The justification for OUTSIDE_CASTING_MODULES: transformers' own forward moves ``inv_freq`` (5.x:
    ``inv_freq.to(device=..)``; 4.x: a view of it, ``.to(x.device)``) to the input's device (watched through
    torch's function hook on any tensor sharing inv_freq's storage; one device here, so the call is what can
    be seen)."""
    loaded = load_components(fixtures_dir / "tiny-small", device="cpu", dtype=torch.float32)
    rotary = next(m for m in loaded.text_encoder.model.modules() if type(m).__name__ == "T5GemmaRotaryEmbedding")
    moves = []

    def shares_inv_freq(tensor: object) -> bool:
        storage = rotary.inv_freq.untyped_storage().data_ptr()
        return torch.is_tensor(tensor) and tensor.untyped_storage().data_ptr() == storage

    class WatchMoves(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is torch.Tensor.to and args and shares_inv_freq(args[0]):
                moves.append(kwargs.get("device", args[1] if len(args) > 1 else None))
            return func(*args, **kwargs)

    x = torch.randn(1, 5, 8)
    with WatchMoves():
        rotary(x, torch.arange(5)[None])
    assert moves and all(torch.device(device) == x.device for device in moves), moves


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_casting_t5gemma_norm_is_transformers_norm_bit_for_bit(dtype: torch.dtype):
    from transformers.models.t5gemma.modeling_t5gemma import T5GemmaRMSNorm

    norm = T5GemmaRMSNorm(16, eps=1e-6).to(dtype)
    torch.nn.init.normal_(norm.weight)
    x = torch.randn(3, 16, dtype=dtype)
    expected = norm(x)
    ops.store_weights(norm)
    assert isinstance(norm, T5GemmaRMSNorm) and isinstance(norm, ops.GemmaRMSNorm)
    assert torch.equal(norm(x), expected)
    norm.weight_function = [lambda w: w + 1]  # a ComfyUI low-VRAM patch is applied at use
    assert not torch.equal(norm(x), expected)


def test_learned_tensors_keep_the_official_keys():
    dit = build_modules(preset_config("small"), device="meta")[DIT_PREFIX]
    keys = list(module_shapes(dit))
    # First of the transformer's keys, where the official parameter sits (state-dict order is kept).
    assert [k for k in keys if k.startswith("transformer.")][0] == "transformer.memory_tokens"
    assert "transformer.layers.3.to_scale_shift_gate" in keys
    assert not [k for k in keys if k.endswith(("memory_tokens.weight", "to_scale_shift_gate.weight"))]
    assert isinstance(dit.transformer.memory_tokens, ops.LearnedTensor)  # the leaf module behind the key


def test_learned_tensor_loads_from_its_flat_key():
    parent = nn.Module()
    ops.attach_tensor(parent, "tokens", ops.LearnedTensor(2, 3))
    values = torch.arange(6.0).view(2, 3)
    parent.load_state_dict({"tokens": values})
    assert torch.equal(parent.tokens.weight, values)
    assert list(parent.state_dict()) == ["tokens"]
    assert parent.tokens(torch.zeros(1, dtype=torch.float64)).dtype == torch.float64  # cast to its input


def test_casting_linear_applies_comfyui_patches_and_the_input_dtype():
    """What ComfyUI does in a low-VRAM load: leaves the weight as it is and puts a LoRA patch into
    weight_function; the layer must compute with the patched weight, in the input's dtype."""
    layer = ops.Linear(4, 3)
    x = torch.randn(2, 4, dtype=torch.float64)
    layer.weight_function = [lambda w: w * 2]
    expected = torch.nn.functional.linear(x, layer.weight.double() * 2, layer.bias.double())
    assert torch.allclose(layer(x), expected)
    assert layer(x).dtype == torch.float64


def test_storing_keeps_matrices_in_float8_and_biases_in_the_compute_dtype():
    namespace = ops.storing(ops.OPS, E4M3)
    with torch.device("meta"):
        layer = namespace.Linear(8, 4, dtype=torch.bfloat16)
    assert (layer.weight.dtype, layer.bias.dtype) == (E4M3, torch.bfloat16)
    with pytest.raises(ValueError, match="float8"):
        build_modules(preset_config("small"), device="meta", weight_dtype=torch.float16)


@pytest.mark.parametrize("weight_dtype", [E4M3, E5M2])
def test_float8_weights_load_and_stay_close_to_fp32(fixtures_dir: Path, weight_dtype):
    folder = fixtures_dir / "tiny-small"
    ref = StableAudioModel.from_pretrained(folder, device="cpu", dtype=torch.float32)
    model = StableAudioModel.from_pretrained(folder, device="cpu", dtype=torch.float32, weight_dtype=weight_dtype)
    dit = dict(model.dit.named_parameters())
    assert dit["transformer.layers.0.self_attn.to_qkv.weight"].dtype == weight_dtype
    assert dit["preprocess_conv.weight"].dtype == weight_dtype
    assert dit["transformer.layers.0.pre_norm.gamma"].dtype == torch.float32
    assert dit["to_timestep_embed.0.bias"].dtype == torch.float32
    assert model.dit.compute_dtype == torch.float32
    encoder = model.text_encoder.model
    assert encoder.encoder.embed_tokens.weight.dtype == weight_dtype
    assert encoder.encoder.layers[0].self_attn.q_proj.weight.dtype == weight_dtype
    assert model.text_encoder.dtype == torch.float32
    # Each stored matrix is the fp32 one rounded to float8.
    base = dict(ref.dit.named_parameters())["transformer.layers.0.self_attn.to_qkv.weight"]
    assert torch.equal(dit["transformer.layers.0.self_attn.to_qkv.weight"], base.to(weight_dtype))

    a = ref.generate("rain on a tin roof", duration=1.0, steps=2, seed=3, return_latents=True)
    b = model.generate("rain on a tin roof", duration=1.0, steps=2, seed=3, return_latents=True)
    assert b.dtype == torch.float32 and torch.isfinite(b).all()
    error = relative_l2(b, a)
    assert 0 < error < 0.05, error  # float8 rounding shows, and stays small


def test_float8_file_loads_bit_exact_and_upcasts(fixtures_dir: Path, tmp_path: Path):
    """A checkpoint whose DiT matrices are stored as F8_E4M3 loads into float8 storage unchanged, and into
    an fp32 model as the exact upcast values."""
    folder = tmp_path / "tiny-small-fp8"
    shutil.copytree(fixtures_dir / "tiny-small", folder, symlinks=True)
    tensors = load_file(str(folder / "model.safetensors"))
    stored = {
        k: v.to(E4M3) if k.startswith(DIT_PREFIX) and k.endswith(".weight") and v.dim() >= 2 else v
        for k, v in tensors.items()
    }
    (folder / "model.safetensors").unlink()
    save_file(stored, str(folder / "model.safetensors"))
    key = "transformer.layers.1.ff.ff.2.weight"

    fp8 = load_components(folder, device="cpu", dtype=torch.float32, weight_dtype=E4M3, load_text_encoder=False)
    weight = dict(fp8.dit.named_parameters())[key]
    assert weight.dtype == E4M3 and torch.equal(weight.view(torch.uint8), stored[DIT_PREFIX + key].view(torch.uint8))

    fp32 = load_components(folder, device="cpu", dtype=torch.float32, load_text_encoder=False)
    assert torch.equal(dict(fp32.dit.named_parameters())[key], stored[DIT_PREFIX + key].float())


def test_lora_on_float8_weights_is_refused(fixtures_dir: Path):
    model = StableAudioModel.from_pretrained(
        fixtures_dir / "tiny-small", device="cpu", dtype=torch.float32, weight_dtype=E4M3
    )
    lora = sorted((fixtures_dir / "loras").glob("*.safetensors"))[0]
    with pytest.raises(LoRAError, match="float8"):
        model.load_lora(lora)
