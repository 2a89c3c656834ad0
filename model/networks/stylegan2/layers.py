"""StyleGAN2 building blocks with equalized learning rate: FC / conv layers and modulated convolution.

Parameter names, shapes, init and forward numerics follow the official
models/stylegan/networks_stylegan2.py (EG3D variant), so official state dicts load 1:1.
The resampling / bias-activation ops are re-exported here so callers need one import.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from model.networks.stylegan2.bias_act import ACTIVATIONS, activation_spec, bias_act
from model.networks.stylegan2.conv2d_resample import conv2d_resample
from model.networks.stylegan2.upfirdn2d import (
    downsample2d,
    filter2d,
    setup_filter,
    upfirdn2d,
    upsample2d,
)

__all__ = [
    "ACTIVATIONS", "bias_act", "conv2d_resample", "downsample2d", "filter2d", "setup_filter", "upfirdn2d",
    "upsample2d", "normalize_2nd_moment", "modulated_conv2d", "FullyConnectedLayer", "Conv2dLayer",
]

DEFAULT_RESAMPLE_FILTER = (1, 3, 3, 1)  # official default low-pass filter for every resampling layer


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale `x` to unit root-mean-square along `dim` (pixel norm of the mapping input)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def modulated_conv2d(
    x: torch.Tensor,  # (N, I, H, W)
    weight: torch.Tensor,  # (O, I, kh, kw)
    styles: torch.Tensor,  # (N, I), or (1, I) shared by every sample
    noise: torch.Tensor | None = None,  # broadcastable to the output (N, O, H', W')
    up: int = 1,
    down: int = 1,
    padding: int = 0,
    resample_filter: torch.Tensor | None = None,
    demodulate: bool = True,
    flip_weight: bool = True,
    fused_modconv: bool = True,
) -> torch.Tensor:
    """StyleGAN2 weight (de)modulation + convolution -> (N, O, H', W').

    fused: one grouped conv with per-sample weights; unfused: scale activations before/after a shared
    conv (same maths, cheaper gradients for training).
    Shared styles ((1, I) with N > 1, e.g. Ψ's w_avg or GenHead's all-ones SR styles): every sample has the
    same modulated weights, so they are built once and the batch runs one dense convolution, whatever
    ``fused_modconv`` says (the same maths again; no per-sample weights, no activation-sized scalings).
    """
    n = x.shape[0]
    out_ch, in_ch, kh, kw = weight.shape
    if x.ndim != 4 or x.shape[1] != in_ch:
        raise ValueError(f"x {tuple(x.shape)} does not match weight {tuple(weight.shape)}")
    shared = n > 1 and styles.shape == (1, in_ch)
    if styles.shape != (n, in_ch) and not shared:
        raise ValueError(f"styles must be ({n}, {in_ch}) or (1, {in_ch}) shared, got {tuple(styles.shape)}")
    if shared:
        fused_modconv = True  # one (1, O, I, kh, kw) weight: the fused form IS the dense convolution
    n_styles = styles.shape[0]

    # fp16: pre-normalize so the modulated weights cannot overflow (official networks_stylegan2.py).
    if x.dtype == torch.float16 and demodulate:
        weight = weight * (1 / math.sqrt(in_ch * kh * kw) / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)

    w = None
    dcoefs = None
    if demodulate or fused_modconv:
        w = weight.unsqueeze(0) * styles.reshape(n_styles, 1, -1, 1, 1)  # (N or 1, O, I, kh, kw)
    if demodulate:
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()  # (N or 1, O): unit-norm output filters
    if demodulate and fused_modconv:
        w = w * dcoefs.reshape(n_styles, -1, 1, 1, 1)

    if not fused_modconv:
        x = x * styles.to(x.dtype).reshape(n, -1, 1, 1)
        x = conv2d_resample(x, weight.to(x.dtype), f=resample_filter, up=up, down=down, padding=padding,
                            flip_weight=flip_weight)
        if demodulate and noise is not None:
            return torch.addcmul(noise.to(x.dtype), x, dcoefs.to(x.dtype).reshape(n, -1, 1, 1))
        if demodulate:
            return x * dcoefs.to(x.dtype).reshape(n, -1, 1, 1)
        if noise is not None:
            return x + noise.to(x.dtype)
        return x

    if shared:
        x = conv2d_resample(x, w[0].to(x.dtype), f=resample_filter, up=up, down=down, padding=padding,
                            flip_weight=flip_weight)
        return x if noise is None else x + noise

    # Fused: fold the batch into channels and run one grouped convolution.
    x = x.reshape(1, -1, *x.shape[2:])
    w = w.reshape(-1, in_ch, kh, kw)
    x = conv2d_resample(x, w.to(x.dtype), f=resample_filter, up=up, down=down, padding=padding, groups=n,
                        flip_weight=flip_weight)
    x = x.reshape(n, -1, *x.shape[2:])
    if noise is not None:
        x = x + noise
    return x


class FullyConnectedLayer(nn.Module):
    """Equalized-lr linear layer: weight stored as randn/lr_mul, used times lr_mul/sqrt(in)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "linear",
                 lr_multiplier: float = 1.0, bias_init: float = 0.0) -> None:
        super().__init__()
        activation_spec(activation)  # fail early on a typo
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)  # (out, in)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None  # (out,)
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, act=self.activation)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


class Conv2dLayer(nn.Module):
    """Equalized-lr conv with optional FIR up/downsampling, bias, activation and clamp.

    `trainable=False` stores weight/bias as buffers (Freeze-D), as official.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = "linear", up: int = 1, down: int = 1,
                 resample_filter: Sequence[float] = DEFAULT_RESAMPLE_FILTER, conv_clamp: float | None = None,
                 channels_last: bool = False, trainable: bool = True) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.activation = activation
        self.up = up
        self.down = down
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)
        self.act_gain = activation_spec(activation).def_gain

        fmt = torch.channels_last if channels_last else torch.contiguous_format
        weight = torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=fmt)
        bias_t = torch.zeros([out_channels]) if bias else None
        if trainable:
            self.weight = nn.Parameter(weight)
            self.bias = nn.Parameter(bias_t) if bias_t is not None else None
        else:
            self.register_buffer("weight", weight)
            if bias_t is not None:
                self.register_buffer("bias", bias_t)
            else:
                self.bias = None

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        w = self.weight * self.weight_gain
        b = self.bias.to(x.dtype) if self.bias is not None else None
        x = conv2d_resample(x, w.to(x.dtype), f=self.resample_filter, up=self.up, down=self.down,
                            padding=self.padding, flip_weight=(self.up == 1))
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, b, act=self.activation, gain=self.act_gain * gain, clamp=clamp)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
                f"activation={self.activation}, up={self.up}, down={self.down}")
