"""SegFormer (Mix Transformer) pieces used by Ψ's canonical encoder and triplane decoder.

Facts from official models/mix_transformer/mix_transformer.py (attribute names kept so that state-dict
keys match): spatial-reduction self-attention, a cross-attention onto motion tokens, the Mix-FFN with a
3x3 depth-wise convolution, and the overlapping patch embedding. Attention runs through
``F.scaled_dot_product_attention`` (same maths as the official softmax(q k^T / sqrt(d)) v, fused).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

Scale = float | torch.Tensor  # python float, or (B, 1, 1) per-sample factor
FUSED_MAX_HEAD_DIM = 256  # widest attention head sent to F.scaled_dot_product_attention on CUDA


def init_segformer_weights(module: nn.Module) -> None:
    """Official ``_init_weights``: truncated-normal linears, unit LayerNorms, He-normal (fan-out) convs."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def tokens_to_map(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, H*W, C) tokens -> (B, C, H, W) feature map."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], height, width)


class _QKVAttention(nn.Module):
    """Multi-head attention with the official ``q`` / ``kv`` / ``proj`` linears (keys and values share ``kv``)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def attend(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x (B, N, C) attends to context (B, M, C) -> (B, N, C)."""
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)
        k, v = self.kv(context).reshape(b, -1, 2, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        if q.is_cuda and q.shape[-1] > FUSED_MAX_HEAD_DIM and not torch.is_grad_enabled():
            # Inference: the memory-efficient kernel takes 512-wide heads and keeps logits and softmax in fp32
            # registers. The explicit fp32 logits below ran as a SIMT sgemm (no tensor cores with TF32 off):
            # 22 ms of a 155 ms bf16 batch-8 frame on an H200 (docs/benchmarks.md).
            with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
                out = F.scaled_dot_product_attention(q, k, v)
        elif q.is_cuda and q.shape[-1] > FUSED_MAX_HEAD_DIM:
            # Ψ's 512-wide heads: the fused kernels either refuse them (flash, cuDNN) or, for the memory-efficient
            # one, took 87 ms per backward on an H200; explicit matmuls (the official formulation) are plain GEMMs.
            # Logits and softmax in fp32 (as the fused kernels accumulate), the weighted sum in v's dtype.
            with torch.autocast("cuda", enabled=False):
                attn = torch.matmul(q.float() * q.shape[-1] ** -0.5, k.float().transpose(-2, -1)).softmax(dim=-1)
            out = torch.matmul(attn.to(v.dtype), v)
        else:
            out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, C/heads)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class SpatialReductionAttention(_QKVAttention):
    """Self-attention whose keys/values come from a ``sr_ratio``-strided copy of the token map."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int = 1) -> None:
        super().__init__(dim, num_heads)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        context = x
        if self.sr_ratio > 1:
            context = self.norm(self.sr(tokens_to_map(x, height, width)).flatten(2).transpose(1, 2))
        return self.attend(x, context)


class MotionCrossAttention(_QKVAttention):
    """Image tokens (queries) attend to motion tokens (keys/values), both ``dim`` wide."""

    def forward(self, x: torch.Tensor, motion_tokens: torch.Tensor) -> torch.Tensor:
        return self.attend(x, motion_tokens)


class _DepthwiseConv(nn.Module):
    """Wrapper so the key reads ``dwconv.dwconv.weight`` as in the official DWConv."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return self.dwconv(tokens_to_map(x, height, width)).flatten(2).transpose(1, 2)


class MixFFN(nn.Module):
    """fc1 -> 3x3 depth-wise conv (positional cue) -> GELU -> fc2."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = _DepthwiseConv(hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return self.fc2(F.gelu(self.dwconv(self.fc1(x), height, width)))


class SegFormerBlock(nn.Module):
    """Pre-norm transformer block: x += attn(norm1 x); x += ffn(norm2 x)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, sr_ratio: int = 1) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SpatialReductionAttention(dim, num_heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MixFFN(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), height, width)
        return x + self.mlp(self.norm2(x), height, width)


class MotionBlock(nn.Module):
    """Official ``BlockCross``: motion cross-attention (scaled), then self-attention, then Mix-FFN.

    ``motion_scale`` multiplies the cross-attention update; 0 switches motion off (Ψ_3d), and
    ``motion_tokens=None`` skips that branch entirely (exactly the same result, less work).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = SpatialReductionAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = MotionCrossAttention(dim, num_heads)
        self.norm3 = nn.LayerNorm(dim)
        self.mlp = MixFFN(dim, int(dim * mlp_ratio))

    def forward(
        self,
        x: torch.Tensor,
        motion_tokens: torch.Tensor | None,
        height: int,
        width: int,
        motion_scale: Scale = 1.0,
    ) -> torch.Tensor:
        if motion_tokens is not None:
            x = x + self.attn2(self.norm2(x), motion_tokens) * motion_scale
        x = x + self.attn1(self.norm1(x), height, width)
        return x + self.mlp(self.norm3(x), height, width)


class OverlapPatchEmbed(nn.Module):
    """Strided conv with overlapping windows + LayerNorm: (B, C, H, W) -> ((B, H'*W', D), H', W')."""

    def __init__(self, in_channels: int, dim: int, patch_size: int = 3, stride: int = 2) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch_size, stride=stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        height, width = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), height, width
