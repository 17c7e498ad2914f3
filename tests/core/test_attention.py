"""Attention kernels (sa3_core.attention) and the shared attention/feed-forward layers (sa3_core.layers)."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sa3_core import attention as attn_mod
from sa3_core.attention import attention, band_attention, dense_band_mask, resolve_backend
from sa3_core.layers import Attention, DyT, FeedForward, RMSNorm, RotaryEmbedding, apply_rotary
from tests.helpers import relative_l2

REPO_ROOT = Path(__file__).resolve().parents[2]


def _qkv(batch: int, heads: int, n: int, dim: int = 64, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, heads, n, dim, generator=gen) for _ in range(3))


def _band_reference(q, k, v, left: int, right: int, key_padding_mask=None) -> torch.Tensor:
    """Full attention with an explicit N x N band mask, written out by hand."""
    n = q.shape[-2]
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    allowed = (j >= i - left) & (j <= i + right)
    if key_padding_mask is not None:
        v = v * key_padding_mask[:, None, :, None]
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    return torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1) @ v


# ---------------------------------------------------------------- band attention


@pytest.mark.parametrize("n", [1, 5, 17, 18, 35, 100, 257])
@pytest.mark.parametrize("window", [17, 1, (3, 9), 0])
def test_band_equals_full_attention_with_band_mask(n: int, window) -> None:
    q, k, v = _qkv(2, 3, n)
    left, right = (window, window) if isinstance(window, int) else window
    expected = _band_reference(q, k, v, left, right)
    got = band_attention(q, k, v, window)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=2e-6, rtol=1e-5)
    # The public entry point picks the same kernel.
    assert torch.allclose(attention(q, k, v, window=window, backend="band"), expected, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("block_size", [1, 4, 17, 40, 500])
def test_band_result_does_not_depend_on_block_size(block_size: int) -> None:
    q, k, v = _qkv(1, 2, 123)
    expected = _band_reference(q, k, v, 17, 17)
    assert torch.allclose(band_attention(q, k, v, 17, block_size=block_size), expected, atol=2e-6, rtol=1e-5)


def test_band_with_padding_mask_uses_value_zeroing() -> None:
    q, k, v = _qkv(2, 2, 90)
    mask = torch.ones(2, 90, dtype=torch.bool)
    mask[0, 70:] = False
    mask[1, 5:9] = False
    expected = _band_reference(q, k, v, 17, 17, key_padding_mask=mask)
    got = attention(q, k, v, window=17, key_padding_mask=mask, backend="band")
    assert torch.allclose(got, expected, atol=2e-6, rtol=1e-5)


def test_sdpa_backend_with_window_matches_band() -> None:
    q, k, v = _qkv(1, 2, 77)
    assert torch.allclose(attention(q, k, v, window=5, backend="sdpa"), band_attention(q, k, v, 5), atol=2e-6)


def test_dense_band_mask_is_inclusive() -> None:
    mask = dense_band_mask(6, 6, (1, 2))
    assert mask[3].tolist() == [False, False, True, True, True, True]
    assert mask[0].tolist() == [True, True, True, False, False, False]


@pytest.mark.parametrize("differential", [False, True])
@pytest.mark.parametrize("n", [35, 101])
def test_attention_layer_band_backend_equals_masked_sdpa(differential: bool, n: int) -> None:
    torch.manual_seed(0)
    layer = Attention(128, differential=differential, qk_norm="dyt")
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.2)
    x = torch.randn(2, n, 128)
    freqs = RotaryEmbedding(32)(n)
    with torch.no_grad():
        layer.backend = "sdpa"
        expected = layer(x, rotary_freqs=freqs, window=17)
        layer.backend = "band"
        got = layer(x, rotary_freqs=freqs, window=17)
        layer.backend = "sdpa"
        full = layer(x, rotary_freqs=freqs)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(full, expected, atol=1e-3)  # the window really restricts attention


_LONG_BAND_SCRIPT = textwrap.dedent(
    """
    import math, resource, sys, torch
    sys.path.insert(0, sys.argv[1])
    from sa3_core.attention import band_attention
    torch.set_num_threads(2)
    n, w = 4096 * 17, 17
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, n, 64, generator=gen) for _ in range(3))
    # Current RSS before (not the earlier high-water mark, which may hide the growth) vs peak RSS after.
    with open("/proc/self/status") as status:
        before = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    out = band_attention(q, k, v, w)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    # Spot-check rows against a direct softmax over their window (edges included).
    worst = 0.0
    for i in (0, 5, 17, 30000, n - 18, n - 1):
        lo, hi = max(0, i - w), min(n, i + w + 1)
        s = (q[0, 0, i] @ k[0, 0, lo:hi].T) / 8.0
        ref = torch.softmax(s, -1) @ v[0, 0, lo:hi]
        worst = max(worst, (out[0, 0, i] - ref).abs().max().item())
    print(f"{(after - before) * 1024} {worst} {tuple(out.shape)}")
    """
)


def test_band_attention_runs_where_a_dense_mask_would_not_fit() -> None:
    # N = 69632: a dense fp32 N x N mask alone would take ~19.4 GB. The band kernel needs O(N * w).
    # Run in a fresh process so the peak-RSS high-water mark belongs to this computation only.
    result = subprocess.run(
        [sys.executable, "-c", _LONG_BAND_SCRIPT, str(REPO_ROOT)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    peak_delta, worst, shape = result.stdout.split(maxsplit=2)
    peak_mib = int(peak_delta) / 2**20
    dense_mask_gib = (4096 * 17) ** 2 * 4 / 2**30
    print(f"band attention N=69632 w=17: peak RSS delta {peak_mib:.1f} MiB (dense fp32 mask: {dense_mask_gib:.1f} GiB)")
    assert shape.strip() == "(1, 1, 69632, 64)"
    assert float(worst) < 1e-5
    assert peak_mib < 2048


# ---------------------------------------------------------------- sdpa + padding (official no-flash semantics)


def test_sdpa_key_padding_is_value_zeroing() -> None:
    q, k, v = _qkv(3, 2, 40)
    mask = torch.ones(3, 40, dtype=torch.bool)
    mask[0, 30:] = False
    mask[2, :3] = False
    got = attention(q, k, v, key_padding_mask=mask, backend="sdpa")
    # Hand-written reference: padded keys stay in the softmax, their values are zero.
    weights = torch.softmax(q @ k.transpose(-1, -2) / 8.0, dim=-1)
    expected = weights @ (v * mask[:, None, :, None].float())
    assert torch.allclose(got, expected, atol=2e-6, rtol=1e-5)
    # ... which is NOT the same as excluding the padded keys from the softmax.
    excluded = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
    assert not torch.allclose(got[0], excluded[0], atol=1e-3)
    assert torch.allclose(got[1], excluded[1], atol=2e-6)  # item 1 has no padding


def test_sdpa_without_mask_is_plain_attention() -> None:
    q, k, v = _qkv(1, 4, 33)
    expected = torch.softmax(q @ k.transpose(-1, -2) / 8.0, dim=-1) @ v
    assert torch.allclose(attention(q, k, v, backend="sdpa"), expected, atol=2e-6, rtol=1e-5)
    assert torch.allclose(attention(q, k, v), expected, atol=2e-6, rtol=1e-5)  # auto on CPU


# ---------------------------------------------------------------- backend choice and the flash path


def test_resolve_backend() -> None:
    cpu = torch.device("cpu")
    assert resolve_backend("auto", cpu, windowed=False) == "sdpa"
    assert resolve_backend("auto", cpu, windowed=True) == "band"
    assert resolve_backend("band", cpu, windowed=False) == "sdpa"
    with pytest.raises(ValueError, match="unknown attention backend"):
        resolve_backend("xformers", cpu, windowed=False)
    if not attn_mod.flash_available():
        with pytest.raises(RuntimeError, match="flash-attn is not installed"):
            attention(*_qkv(1, 1, 4), backend="flash")


def _fake_flash_func(q, k, v, causal=False, window_size=(-1, -1)):
    """Stand-in for flash_attn_func on (B, N, H, D) fp16 tensors, computed in fp32."""
    assert q.dtype == torch.float16 and not causal
    left, right = window_size
    qf, kf, vf = (t.float().transpose(1, 2) for t in (q, k, v))
    if left < 0:
        out = F.scaled_dot_product_attention(qf, kf, vf)
    else:
        out = _band_reference(qf, kf, vf, left, right)
    return out.transpose(1, 2).to(q.dtype)


def _fake_flash_varlen(q, k, v, cu_q, cu_k, max_q, max_k, causal=False, window_size=(-1, -1)):
    """Stand-in for flash_attn_varlen_func on packed (total, H, D) tensors."""
    assert torch.equal(cu_q, cu_k) and cu_q.dtype == torch.int32
    outs = []
    for start, end in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
        piece = [t[start:end].unsqueeze(0) for t in (q, k, v)]
        outs.append(_fake_flash_func(*piece, causal=causal, window_size=window_size)[0])
    return torch.cat(outs)


@pytest.fixture
def fake_flash(monkeypatch):
    """Exercise the flash packing code without flash-attn (which is not installed here)."""
    monkeypatch.setattr(attn_mod, "_flash_attn_func", _fake_flash_func)
    monkeypatch.setattr(attn_mod, "_flash_attn_varlen_func", _fake_flash_varlen)


@pytest.mark.parametrize("window", [None, 3])
def test_flash_varlen_padding_excludes_padded_keys_and_zeroes_padded_rows(fake_flash, window) -> None:
    q, k, v = _qkv(2, 2, 20)
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[0, 14:] = False
    out = attention(q, k, v, key_padding_mask=mask, window=window, backend="flash")
    assert out.dtype == torch.float32
    assert torch.count_nonzero(out[0, :, 14:]) == 0
    # Valid rows: attention over the valid tokens only (fp16 kernel, hence the tolerance).
    left = right = window if window is not None else 10**6
    expected0 = _band_reference(q[:1, :, :14], k[:1, :, :14], v[:1, :, :14], left, right)
    expected1 = _band_reference(q[1:], k[1:], v[1:], left, right)
    assert relative_l2(out[:1, :, :14], expected0) < 2e-3
    assert relative_l2(out[1:], expected1) < 2e-3


def test_flash_dense_window(fake_flash) -> None:
    q, k, v = _qkv(1, 2, 50)
    out = attention(q, k, v, window=17, backend="flash")
    assert relative_l2(out, _band_reference(q, k, v, 17, 17)) < 2e-3


# ---------------------------------------------------------------- shared layers


def test_rotary_rotates_first_half_of_head_neox_style() -> None:
    rope = RotaryEmbedding(32)
    assert rope.inv_freq.shape == (16,)
    assert "inv_freq" in rope.state_dict()  # persistent: loaded from the checkpoints
    freqs = rope(7)
    x = torch.randn(1, 2, 7, 64)
    out = apply_rotary(x, freqs)
    assert torch.equal(out[..., 32:], x[..., 32:])
    # Position p rotates the pair (c, c + 16) by angle p * inv_freq[c].
    p, c = 5, 3
    angle = p * rope.inv_freq[c]
    a, b = x[..., p, c], x[..., p, c + 16]
    assert torch.allclose(out[..., p, c], a * torch.cos(angle) - b * torch.sin(angle), atol=1e-6)
    assert torch.allclose(out[..., p, c + 16], b * torch.cos(angle) + a * torch.sin(angle), atol=1e-6)
    assert torch.allclose(out[..., 0, :], x[..., 0, :])  # position 0 is the identity


def test_norms() -> None:
    x = torch.randn(3, 5, 16, dtype=torch.float16)
    rms = RMSNorm(16, force_fp32=True)
    with torch.no_grad():
        rms.gamma.uniform_(0.5, 1.5)
    out = rms(x)
    xf = x.float()
    expected = xf / torch.sqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5) * rms.gamma
    assert out.dtype == torch.float16
    assert torch.allclose(out.float(), expected, atol=2e-3)
    dyt = DyT(16)
    assert set(dyt.state_dict()) == {"alpha", "gamma", "beta"}
    assert torch.allclose(dyt(xf), torch.tanh(4.0 * xf))


@pytest.mark.parametrize("sinusoidal", [False, True])
def test_feed_forward_gate(sinusoidal: bool) -> None:
    torch.manual_seed(0)
    ff = FeedForward(8, 3, sinusoidal=sinusoidal)
    assert set(ff.state_dict()) == {"ff.0.proj.weight", "ff.0.proj.bias", "ff.2.weight", "ff.2.bias"}
    assert ff.ff[0].proj.weight.shape == (48, 8)
    x = torch.randn(2, 4, 8)
    value, gate = ff.ff[0].proj(x).chunk(2, dim=-1)
    act = torch.sin(math.pi * gate) if sinusoidal else gate * torch.sigmoid(gate)
    assert torch.allclose(ff(x), ff.ff[2](value * act), atol=1e-6)


def test_cross_attention_projection_layout() -> None:
    plain = Attention(128, context_dim=128)
    diff = Attention(128, context_dim=128, differential=True)
    assert plain.to_q.weight.shape == (128, 128) and plain.to_kv.weight.shape == (256, 128)
    assert diff.to_q.weight.shape == (256, 128) and diff.to_kv.weight.shape == (384, 128)
    assert Attention(128, differential=True).to_qkv.weight.shape == (640, 128)
    x, ctx = torch.randn(2, 6, 128), torch.randn(2, 9, 128)
    assert diff(x, ctx).shape == (2, 6, 128)
