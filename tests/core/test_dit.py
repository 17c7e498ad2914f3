"""The diffusion transformer (sa3_core.dit) against the official implementation's outputs and shapes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from sa3_core import attention as attn_mod
from sa3_core.config import ModelConfig
from sa3_core.dit import DiffusionTransformer
from sa3_core.layers import Attention
from tests.helpers import relative_l2

DIT_PREFIX = "model.model."


def _load_tiny_dit(fixtures_dir: Path, name: str, backend: str = "sdpa") -> DiffusionTransformer:
    """Minimal local loader: the DiT tensors of a tiny checkpoint, prefix stripped, strict."""
    cfg = ModelConfig.from_json(fixtures_dir / name / "model_config.json")
    tensors = load_file(fixtures_dir / name / "model.safetensors")
    state = {key[len(DIT_PREFIX) :]: value for key, value in tensors.items() if key.startswith(DIT_PREFIX)}
    model = DiffusionTransformer(cfg.dit, attention_backend=backend)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _components(fixtures_dir: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(fixtures_dir / "components" / f"{name}.safetensors")


def _fake_flash_func(q, k, v, causal=False, window_size=(-1, -1)):
    """Stand-in for flash_attn_func (full attention only, as the DiT uses): (B, N, H, D) fp16."""
    assert q.dtype == torch.float16 and tuple(window_size) == (-1, -1) and not causal
    out = F.scaled_dot_product_attention(*(t.float().transpose(1, 2) for t in (q, k, v)))
    return out.transpose(1, 2).to(q.dtype)


def _fake_flash_varlen(q, k, v, cu_q, cu_k, max_q, max_k, causal=False, window_size=(-1, -1)):
    """Stand-in for flash_attn_varlen_func: attention within each packed sequence."""
    bounds = zip(cu_q[:-1].tolist(), cu_q[1:].tolist())
    return torch.cat([_fake_flash_func(*(t[a:b][None] for t in (q, k, v)), causal, window_size)[0] for a, b in bounds])


@pytest.mark.parametrize("name", ["tiny-small", "tiny-medium"])
def test_dit_matches_official_output(fixtures_dir: Path, name: str) -> None:
    # components/<name>.json: model(x, t, cross_attn_cond, cross_attn_mask, global_cond, local_add_cond),
    # no padding mask; the official forward discards cross_attn_mask.
    call = json.loads((fixtures_dir / "components" / f"{name}.json").read_text())["dit_call"]
    assert "padding" not in call
    model = _load_tiny_dit(fixtures_dir, name)
    c = _components(fixtures_dir, name)
    with torch.no_grad():
        out = model(c["dit.x"], c["dit.t"], c["cross_attn_cond"], c["global_cond"], c["local_add_cond"])
    error = relative_l2(out, c["dit.output"])
    print(f"{name} DiT rel L2 error: {error:.3e}")
    assert out.shape == c["dit.output"].shape
    assert error <= 1e-4


def test_context_tokens_matter(fixtures_dir: Path) -> None:
    # Guard against a parity test passing on ignored inputs: the prompt tokens must change the output
    # far beyond the parity error (the tiny random model reacts weakly: ~4e-4 relative).
    model = _load_tiny_dit(fixtures_dir, "tiny-small")
    c = _components(fixtures_dir, "tiny-small")
    with torch.no_grad():
        zero_ctx = model(
            c["dit.x"], c["dit.t"], torch.zeros_like(c["cross_attn_cond"]), c["global_cond"], c["local_add_cond"]
        )
    assert relative_l2(zero_ctx, c["dit.output"]) > 1e-5


@pytest.mark.parametrize(
    ("config_name", "shapes_name", "params"),
    [("small-music", "small", 459_130_880), ("medium", "medium", 1_453_170_176)],
)
def test_real_architecture_keys_shapes_and_size(
    fixtures_dir: Path, config_name: str, shapes_name: str, params: int
) -> None:
    shapes_dir = fixtures_dir / "real_shapes"
    cfg = ModelConfig.from_json(shapes_dir / f"{config_name}_model_config.reconstructed.json")
    model = DiffusionTransformer(cfg.dit, device="meta")
    ours = {key: list(t.shape) for key, t in model.state_dict().items()}
    reference = json.loads((shapes_dir / f"{shapes_name}_state_dict_shapes.json").read_text())
    expected = {key[len(DIT_PREFIX) :]: shape for key, shape in reference.items() if key.startswith(DIT_PREFIX)}
    assert sorted(set(expected) - set(ours)) == []
    assert sorted(set(ours) - set(expected)) == []
    assert ours == expected
    assert sum(p.numel() for p in model.parameters()) == params
    # The RoPE table is a checkpoint buffer, not a parameter.
    assert "transformer.rotary_pos_emb.inv_freq" in ours
    assert all(p.device.type == "meta" for p in model.state_dict().values())


def test_batched_cfg_equals_separate_calls(fixtures_dir: Path) -> None:
    model = _load_tiny_dit(fixtures_dir, "tiny-medium")
    c = _components(fixtures_dir, "tiny-medium")
    uncond = torch.zeros_like(c["cross_attn_cond"])
    mask = torch.ones(3, 24, dtype=torch.bool)
    mask[1, 18:] = False
    args = (c["dit.x"], c["dit.t"])
    with torch.no_grad():
        twice = lambda tensor: torch.cat([tensor, tensor])  # noqa: E731
        batched = model(
            twice(c["dit.x"]),
            twice(c["dit.t"]),
            torch.cat([c["cross_attn_cond"], uncond]),
            twice(c["global_cond"]),
            twice(c["local_add_cond"]),
            twice(mask),
        )
        v_cond, v_uncond = batched.chunk(2)
        sep_cond = model(*args, c["cross_attn_cond"], c["global_cond"], c["local_add_cond"], mask)
        sep_uncond = model(*args, uncond, c["global_cond"], c["local_add_cond"], mask)
    assert torch.allclose(v_cond, sep_cond, atol=1e-5)
    assert torch.allclose(v_uncond, sep_uncond, atol=1e-5)
    assert relative_l2(v_uncond, v_cond) > 1e-5


def test_padding_mask_none_means_all_valid(fixtures_dir: Path) -> None:
    model = _load_tiny_dit(fixtures_dir, "tiny-small")
    c = _components(fixtures_dir, "tiny-small")
    inputs = (c["dit.x"], c["dit.t"], c["cross_attn_cond"], c["global_cond"], c["local_add_cond"])
    with torch.no_grad():
        unmasked = model(*inputs)
        all_valid = model(*inputs, torch.ones(3, 24, dtype=torch.bool))
        padded = torch.ones(3, 24, dtype=torch.bool)
        padded[0, 16:] = False
        masked = model(*inputs, padded)
    assert torch.allclose(unmasked, all_valid, atol=1e-6)
    # V-zeroing (sdpa): only the padded item changes.
    assert torch.allclose(masked[1:], unmasked[1:], atol=1e-6)
    assert not torch.allclose(masked[0], unmasked[0], atol=1e-4)


def test_flash_padding_semantics_isolate_valid_frames(fixtures_dir: Path, monkeypatch) -> None:
    # Official CUDA varlen semantics: valid frames never see padded frames. flash-attn is not installed
    # here, so the kernels are replaced by exact stand-ins.
    monkeypatch.setattr(attn_mod, "_flash_attn_func", _fake_flash_func)
    monkeypatch.setattr(attn_mod, "_flash_attn_varlen_func", _fake_flash_varlen)
    model = _load_tiny_dit(fixtures_dir, "tiny-medium", backend="flash")
    c = _components(fixtures_dir, "tiny-medium")
    mask = torch.ones(3, 24, dtype=torch.bool)
    mask[:, 20:] = False
    x_other = c["dit.x"].clone()
    x_other[..., 20:] = torch.randn_like(x_other[..., 20:]) * 10
    rest = (c["cross_attn_cond"], c["global_cond"], c["local_add_cond"], mask)
    with torch.no_grad():
        out = model(c["dit.x"], c["dit.t"], *rest)
        out_other = model(x_other, c["dit.t"], *rest)
        model.attention_backend = "sdpa"
        reference = model(c["dit.x"], c["dit.t"], *rest[:-1])  # close to the fixture's unmasked call
    assert torch.allclose(out[..., :20], out_other[..., :20], atol=1e-6)
    assert relative_l2(reference, c["dit.output"]) < 1e-4
    assert relative_l2(out[..., :20], reference[..., :20]) < 0.2  # same model, different padding semantics + fp16


def test_attention_backend_setter_reaches_every_attention(fixtures_dir: Path) -> None:
    model = _load_tiny_dit(fixtures_dir, "tiny-small")
    model.attention_backend = "band"
    backends = {m.backend for m in model.modules() if isinstance(m, Attention)}
    assert backends == {"band"}
    with pytest.raises(ValueError):
        model.attention_backend = "nope"


def test_half_precision_forward_runs(fixtures_dir: Path) -> None:
    model = _load_tiny_dit(fixtures_dir, "tiny-small").to(torch.bfloat16)
    c = _components(fixtures_dir, "tiny-small")
    with torch.no_grad():
        out = model(c["dit.x"], c["dit.t"], c["cross_attn_cond"], c["global_cond"], c["local_add_cond"])
    assert out.dtype == torch.bfloat16
    assert relative_l2(out.float(), c["dit.output"]) < 0.05
