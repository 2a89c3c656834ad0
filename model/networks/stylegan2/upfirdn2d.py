"""Upsample -> pad -> FIR filter -> downsample of 2-D images, in plain torch.

Semantics of the reference path of the official torch_utils/ops/upfirdn2d.py (no custom CUDA op):
  1. insert `up - 1` zeros after every pixel, 2. pad (negative = crop),
  3. convolve with the FIR filter `f` (valid mode), 4. keep every `down`-th pixel.
Filters are float32, either 2-D `[fh, fw]` or 1-D separable `[taps]`.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from model.compiled import on_cuda

Pair = int | Sequence[int]


def _scaling(v: Pair) -> tuple[int, int]:
    sx, sy = (v, v) if isinstance(v, int) else tuple(v)
    if sx < 1 or sy < 1:
        raise ValueError(f"resampling factor must be >= 1, got {v}")
    return int(sx), int(sy)


def _padding(p: Pair) -> tuple[int, int, int, int]:
    """-> (x_before, x_after, y_before, y_after)."""
    if isinstance(p, int):
        return p, p, p, p
    p = tuple(int(v) for v in p)
    if len(p) == 2:
        return p[0], p[0], p[1], p[1]
    if len(p) == 4:
        return p  # type: ignore[return-value]
    raise ValueError(f"padding must be an int, [x, y] or [x0, x1, y0, y1], got {p}")


def filter_size(f: torch.Tensor | None) -> tuple[int, int]:
    """-> (width, height) of a 1-D (separable) or 2-D filter; (1, 1) for None."""
    if f is None:
        return 1, 1
    if f.ndim not in (1, 2):
        raise ValueError(f"FIR filter must be 1-D or 2-D, got shape {tuple(f.shape)}")
    return int(f.shape[-1]), int(f.shape[0])


def setup_filter(
    f: Sequence[float] | torch.Tensor | None,
    device: torch.device | None = None,
    normalize: bool = True,
    flip_filter: bool = False,
    gain: float = 1.0,
    separable: bool | None = None,
) -> torch.Tensor:
    """Prepare a FIR filter (e.g. [1, 3, 3, 1]) for `upfirdn2d`.

    A 1-D list becomes its 2-D outer product unless `separable` (default: separable only for >= 8 taps,
    as official). Normalised to unit DC gain. `device=None` keeps the current default device, so the
    filter can be built under a `torch.device('meta')` context.
    """
    f = torch.as_tensor(1.0 if f is None else f, dtype=torch.float32)
    if f.numel() == 0 or f.ndim > 2:
        raise ValueError(f"FIR filter must be a non-empty scalar, 1-D or 2-D array, got shape {tuple(f.shape)}")
    if f.ndim == 0:
        f = f.reshape(1)
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    if separable and f.ndim != 1:
        raise ValueError("a separable filter must be 1-D")
    if normalize:
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f * (gain ** (f.ndim / 2))
    return f if device is None else f.to(device)


def _correlate_taps(u: torch.Tensor, g: torch.Tensor, down_y: int, down_x: int,
                    out_dtype: torch.dtype) -> torch.Tensor:
    """Valid correlation of u (N,C,H,W) with the 2-D kernel g (kh,kw), keeping every down-th output.

    Accumulates in fp32 whatever u's dtype (the official CUDA op does too) and returns ``out_dtype``; the
    casts sit inside the compiled kernel, so a bf16 input is never copied to fp32 in memory.

    One strided multiply-add per tap (16 for the usual 4x4 filter): memory-bound elementwise work, which
    on CUDA is compiled into one fused kernel (model.compiled; measured in docs/benchmarks.md).
    The filter's taps stay on the device (0-dim tensors), so nothing waits for the GPU.
    """
    return on_cuda(_taps, u)(u, g, down_y, down_x, out_dtype)


def _taps(u: torch.Tensor, g: torch.Tensor, down_y: int, down_x: int, out_dtype: torch.dtype) -> torch.Tensor:
    u = u.to(torch.promote_types(u.dtype, torch.float32))
    kh, kw = g.shape
    h_out = (u.shape[2] - kh) // down_y + 1
    w_out = (u.shape[3] - kw) // down_x + 1
    if h_out < 1 or w_out < 1:
        raise ValueError(f"upfirdn2d: a {kh}x{kw} filter leaves no output of a {u.shape[2]}x{u.shape[3]} input")
    out = None
    for i in range(kh):
        for j in range(kw):
            tap = u[:, :, i: i + (h_out - 1) * down_y + 1: down_y, j: j + (w_out - 1) * down_x + 1: down_x]
            out = tap * g[i, j] if out is None else out.addcmul_(tap, g[i, j])
    return out.to(out_dtype)


def _phases(n: int, up: int, p0: int, p1: int, taps: int) -> tuple[int, list[tuple[int, int, int, int]], int, int]:
    """One axis of an upsample-then-correlate: the output length, and per output phase r (outputs m = qU + r)
    (outputs, first tap, taps, first input offset). Only taps k with U | (r + k - p0) land on real samples,
    u[m + k] = x[q + (r + k - p0) / U]: every U-th tap, reading consecutive inputs. Also the zero padding x
    needs before / after so that every read is in range."""
    length = n * up + p0 + p1 - taps + 1
    phases, lo, hi = [], 0, 0
    for r in range(up):
        count = max(0, -(-(length - r) // up))
        first = (p0 - r) % up
        n_taps = len(range(first, taps, up))
        offset = (r + first - p0) // up
        phases.append((count, first, n_taps, offset))
        if count and n_taps:
            lo, hi = min(lo, offset), max(hi, offset + n_taps - 1 + count - 1 - (n - 1))
    return length, phases, -lo, hi


def _upsample_polyphase(x: torch.Tensor, g: torch.Tensor, upx: int, upy: int, pad: tuple[int, int, int, int]):
    """Zero-insert by (upy, upx), pad, correlate with g (kh, kw) -- without the zeros: each of the upy x upx
    output phases is a correlation of x with the taps that land on real samples (1/(upx*upy) of the work)."""
    px0, px1, py0, py1 = pad
    n, c, h, w = x.shape
    kh, kw = g.shape
    out_h, phases_y, lo_y, hi_y = _phases(h, upy, py0, py1, kh)
    out_w, phases_x, lo_x, hi_x = _phases(w, upx, px0, px1, kw)
    if out_h < 1 or out_w < 1:
        raise ValueError(f"upfirdn2d: a {kh}x{kw} filter leaves no output of a {h}x{w} input upsampled {upy}x{upx}")
    xp = F.pad(x, [lo_x, hi_x, lo_y, hi_y])
    out = x.new_zeros(n, c, out_h, out_w)
    for ry, (count_y, ky, taps_y, oy) in enumerate(phases_y):
        for rx, (count_x, kx, taps_x, ox) in enumerate(phases_x):
            if count_y and count_x and taps_y and taps_x:  # else the phase reads only inserted zeros
                rows = slice(lo_y + oy, lo_y + oy + taps_y + count_y - 1)
                cols = slice(lo_x + ox, lo_x + ox + taps_x + count_x - 1)
                out[:, :, ry::upy, rx::upx] = _correlate_taps(xp[:, :, rows, cols], g[ky::upy, kx::upx], 1, 1,
                                                              x.dtype)
    return out


def _upfirdn2d_forward(x: torch.Tensor, f: torch.Tensor, up: tuple[int, int], down: tuple[int, int],
                       pad: tuple[int, int, int, int], flip_filter: bool, gain: float) -> torch.Tensor:
    """The operation itself, without autograd; see the module docstring for the order of steps."""
    upx, upy = up
    downx, downy = down
    px0, px1, py0, py1 = pad
    n, c, h, w = x.shape
    out_dtype = x.dtype
    # Half-precision inputs are filtered in fp32 (in _correlate_taps; zero insertion and padding are exact).
    # Convolution = correlation with the flipped filter (flip_filter=True: correlate with f as is).
    g = (f * (gain ** (f.ndim / 2))).to(torch.promote_types(x.dtype, torch.float32))
    g = g if flip_filter else g.flip(list(range(g.ndim)))
    if (upx > 1 or upy > 1) and downx == downy == 1:
        return _upsample_polyphase(x, g if g.ndim == 2 else torch.outer(g, g), upx, upy, pad)

    # 1. zero insertion: each pixel becomes a (upy, upx) cell with the pixel at its top-left.
    if upx > 1 or upy > 1:
        x = F.pad(x.reshape(n, c, h, 1, w, 1), [0, upx - 1, 0, 0, 0, upy - 1]).reshape(n, c, h * upy, w * upx)
    # 2. pad positive amounts, crop negative ones.
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]

    # 3.+4. correlation and decimation, tap by tap.
    # Not F.conv2d: with the channels folded into the batch (1 in, 1 out channel) cuDNN picks implicit-GEMM
    # kernels that took 85 ms for one 512x512x512 filtering on an H200 (45% of a Ψ training step), and its
    # grouped (groups=C) convs were slower still.
    if g.ndim == 2:
        return _correlate_taps(x, g, downy, downx, out_dtype)
    x = _correlate_taps(x, g[None, :], 1, downx, g.dtype)  # the intermediate stays in fp32
    return _correlate_taps(x, g[:, None], downy, 1, out_dtype)


class _UpFirDn2d(torch.autograd.Function):
    """upfirdn2d with its exact adjoint as the backward: the gradient of upsample-by-U / filter /
    downsample-by-D is downsample-by-U / flipped filter / upsample-by-D of the output gradient (the
    transpose of each linear step in reverse order). The backward calls this Function again, so
    double backward (the discriminator's R1 penalty) gets the same fast path. No gradient for the
    filter: filters are fixed buffers."""

    @staticmethod
    def forward(ctx, x, f, up, down, pad, flip_filter, gain):
        ctx.save_for_backward(f)
        ctx.args = (up, down, pad, flip_filter, gain, x.shape[2], x.shape[3])
        return _upfirdn2d_forward(x, f, up, down, pad, flip_filter, gain)

    @staticmethod
    def backward(ctx, dy):
        (f,) = ctx.saved_tensors
        (upx, upy), (downx, downy), (px0, px1, py0, py1), flip_filter, gain, in_h, in_w = ctx.args
        fw, fh = filter_size(f)
        out_h, out_w = dy.shape[2], dy.shape[3]
        # Adjoint padding, derived per axis: the transposed correlation pads the zero-inserted gradient by
        # (taps - 1) before, the forward's leading pad p0 is cropped off, and the end is cut so that
        # decimating by the forward's `up` returns exactly the input length.
        pad = (fw - px0 - 1, in_w * upx - out_w * downx + px0 - upx + 1,
               fh - py0 - 1, in_h * upy - out_h * downy + py0 - upy + 1)
        dx = _UpFirDn2d.apply(dy, f, (downx, downy), (upx, upy), pad, not flip_filter, gain)
        return dx, None, None, None, None, None, None


def upfirdn2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    up: Pair = 1,
    down: Pair = 1,
    padding: Pair = 0,
    flip_filter: bool = False,
    gain: float = 1.0,
) -> torch.Tensor:
    """x (N,C,H,W) -> (N,C,H',W'); see module docstring for the order of operations."""
    if x.ndim != 4:
        raise ValueError(f"upfirdn2d expects (N,C,H,W), got shape {tuple(x.shape)}")
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    filter_size(f)  # validates the filter's rank
    return _UpFirDn2d.apply(x, f, _scaling(up), _scaling(down), _padding(padding), bool(flip_filter), float(gain))


def filter2d(x: torch.Tensor, f: torch.Tensor | None, padding: Pair = 0, flip_filter: bool = False,
             gain: float = 1.0) -> torch.Tensor:
    """Filter keeping the input size (plus optional extra `padding`)."""
    px0, px1, py0, py1 = _padding(padding)
    fw, fh = filter_size(f)
    pad = [px0 + fw // 2, px1 + (fw - 1) // 2, py0 + fh // 2, py1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=pad, flip_filter=flip_filter, gain=gain)


def upsample2d(x: torch.Tensor, f: torch.Tensor | None, up: Pair = 2, padding: Pair = 0,
               flip_filter: bool = False, gain: float = 1.0) -> torch.Tensor:
    """Upsample by `up` with FIR filtering; output is exactly `up` times the input size."""
    upx, upy = _scaling(up)
    px0, px1, py0, py1 = _padding(padding)
    fw, fh = filter_size(f)
    pad = [px0 + (fw + upx - 1) // 2, px1 + (fw - upx) // 2, py0 + (fh + upy - 1) // 2, py1 + (fh - upy) // 2]
    # gain up*up compensates for the inserted zeros.
    return upfirdn2d(x, f, up=up, padding=pad, flip_filter=flip_filter, gain=gain * upx * upy)


def downsample2d(x: torch.Tensor, f: torch.Tensor | None, down: Pair = 2, padding: Pair = 0,
                 flip_filter: bool = False, gain: float = 1.0) -> torch.Tensor:
    """Low-pass and downsample by `down`; output is exactly 1/`down` of the input size."""
    downx, downy = _scaling(down)
    px0, px1, py0, py1 = _padding(padding)
    fw, fh = filter_size(f)
    pad = [px0 + (fw - downx + 1) // 2, px1 + (fw - downx) // 2,
           py0 + (fh - downy + 1) // 2, py1 + (fh - downy) // 2]
    return upfirdn2d(x, f, down=down, padding=pad, flip_filter=flip_filter, gain=gain)
