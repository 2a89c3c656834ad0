"""One Triton kernel for a radiance-field query: triplane sampling + plane mean + OSG decoder MLP.

The eager path (``sample_from_planes`` then ``OSGDecoder``) writes every point's three 32-channel plane samples
to memory (grid_sample's (B, 3, C, P) output, 2.4 GB in fp32 at batch 8 on the serving path), reads them back
for the mean, writes the mean, and runs the MLP as separate matmuls and activations. Here each program takes a
block of points, gathers the four bilinear corners of each plane from channels-last planes, averages the planes,
runs FC -> softplus -> the rgb and sigma heads in registers, and writes only rgb (B, P, C_out) and raw sigma
(B, P, 1) in fp32. Inference only (no backward): the renderer uses it when no gradient is recorded and
``fused`` is asked for.

Same maths as the eager path: grid_sample's bilinear, zero padding, align_corners=False (corners summed in
grid_sample's order nw, ne, sw, se; planes summed in order, then divided by 3), the equalized-lr FC layers
(gains folded into the weights), softplus with torch's threshold 20, the widened sigmoid. Matmuls in fp32
(``input_precision="ieee"``, no TF32), so the kernel is at least as exact as the eager path under bf16 autocast.
Tests run it through Triton's interpreter on the CPU (``TRITON_INTERPRET=1``) against the eager path.
"""

from __future__ import annotations

import math

import torch

from model.rendering.decoder import OSGDecoder
from model.triton_support import available, interpreting, jitted, runs_on, tl

BLOCK_POINTS = 64  # points per program on the GPU
_INTERPRETER_BLOCK = 4096  # the interpreter runs a program as numpy arrays: bigger blocks, fewer Python loops


if tl is not None:  # the kernel body; its annotations need triton.language

    def _decode(points_ptr, scale_ptr, planes_ptr, w1_ptr, b1_ptr, wr_ptr, br_ptr, ws_ptr, bs_ptr, rgb_ptr, sigma_ptr,
                n_points, height, width, n_ch, n_hidden, n_out,
                C: tl.constexpr, HID: tl.constexpr, OUT: tl.constexpr, BLOCK: tl.constexpr):
        """Kernel body (jitted on first use): one program = BLOCK points of one batch element."""
        batch = tl.program_id(1)
        rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        valid = rows < n_points
        point = (batch.to(tl.int64) * n_points + rows) * 3
        scale = tl.load(scale_ptr + batch)
        x = tl.load(points_ptr + point, mask=valid, other=0.0).to(tl.float32) * scale
        y = tl.load(points_ptr + point + 1, mask=valid, other=0.0).to(tl.float32) * scale
        z = tl.load(points_ptr + point + 2, mask=valid, other=0.0).to(tl.float32) * scale
        ch = tl.arange(0, C)
        plane_size = height.to(tl.int64) * width
        feat = tl.zeros((BLOCK, C), dtype=tl.float32)
        for pl in tl.static_range(3):
            # planes (x, y), (y, z), (z, x) as triplane_axes(); summed in order, then averaged
            if pl == 0:
                u = x
                v = y
            elif pl == 1:
                u = y
                v = z
            else:
                u = z
                v = x
            # grid_sample, bilinear, align_corners=False: pixel = ((g + 1) * size - 1) / 2
            ix = ((u + 1.0) * width - 1.0) / 2.0
            iy = ((v + 1.0) * height - 1.0) / 2.0
            x0f = tl.floor(ix)
            y0f = tl.floor(iy)
            base = (batch.to(tl.int64) * 3 + pl) * plane_size
            sampled = tl.zeros((BLOCK, C), dtype=tl.float32)
            for corner in tl.static_range(4):  # grid_sample's order: nw, ne, sw, se
                if corner % 2 == 0:
                    wx = x0f + 1.0 - ix
                else:
                    wx = ix - x0f
                if corner // 2 == 0:
                    wy = y0f + 1.0 - iy
                else:
                    wy = iy - y0f
                xi = x0f.to(tl.int32) + corner % 2
                yi = y0f.to(tl.int32) + corner // 2
                inside = valid & (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
                offset = (base + yi.to(tl.int64) * width + xi) * n_ch
                values = tl.load(planes_ptr + offset[:, None] + ch[None, :],
                                 mask=inside[:, None] & (ch[None, :] < n_ch), other=0.0)
                sampled += values.to(tl.float32) * (wx * wy)[:, None]
            feat += sampled
        feat = feat / 3.0

        hid = tl.arange(0, HID)
        outs = tl.arange(0, OUT)
        w1 = tl.load(w1_ptr + ch[:, None] * n_hidden + hid[None, :],
                     mask=(ch[:, None] < n_ch) & (hid[None, :] < n_hidden), other=0.0)  # (C, HID) = W1ᵀ
        h = tl.dot(feat, w1, input_precision="ieee")
        h += tl.load(b1_ptr + hid, mask=hid < n_hidden, other=0.0)[None, :]
        h = tl.where(h > 20.0, h, tl.log(1.0 + tl.exp(tl.minimum(h, 20.0))))  # softplus, torch's threshold
        h = tl.where(hid[None, :] < n_hidden, h, 0.0)
        wr = tl.load(wr_ptr + hid[:, None] * n_out + outs[None, :],
                     mask=(hid[:, None] < n_hidden) & (outs[None, :] < n_out), other=0.0)  # (HID, OUT) = Wrᵀ
        rgb = tl.dot(h, wr, input_precision="ieee")
        rgb += tl.load(br_ptr + outs, mask=outs < n_out, other=0.0)[None, :]
        rgb = tl.sigmoid(rgb) * (1.0 + 2.0 * 0.001) - 0.001  # OSGDecoder's widened sigmoid (padding 0.001)
        ws = tl.load(ws_ptr + hid, mask=hid < n_hidden, other=0.0)
        sigma = tl.sum(h * ws[None, :], axis=1) + tl.load(bs_ptr)
        out_rows = batch.to(tl.int64) * n_points + rows
        tl.store(rgb_ptr + out_rows[:, None] * n_out + outs[None, :], rgb, mask=valid[:, None] & (outs[None, :] < n_out))
        tl.store(sigma_ptr + out_rows, sigma, mask=valid)


def _effective(layer) -> tuple[torch.Tensor, torch.Tensor]:
    """(weightᵀ (in, out), bias (out,)) of an equalized-lr FullyConnectedLayer, in fp32, gains folded in."""
    weight = layer.weight.detach().float() * layer.weight_gain
    bias = layer.bias.detach().float() * layer.bias_gain
    return weight.t().contiguous(), bias.contiguous()


def _padded(n: int) -> int:
    return max(16, 1 << math.ceil(math.log2(n)))  # tl.dot needs power-of-two sizes of at least 16


class FusedTriplaneDecoder:
    """``decoder(sample_from_planes(triplane_axes(), planes, points, box_warp, box_warp_scale))`` in one kernel.

    Built once per render (the planes' channels-last copy and the decoder's folded weights are made here), then
    called for each sample pass: points (B, P, 3) -> (rgb (B, P, C_out), raw sigma (B, P, 1)), both fp32.
    Inference only: it refuses inputs that record a gradient.
    """

    def __init__(self, planes: torch.Tensor, decoder: OSGDecoder, box_warp: float,
                 box_warp_scale: float | torch.Tensor = 1.0) -> None:
        if not available():
            raise RuntimeError("the fused triplane decoder needs Triton (it ships with CUDA builds of torch)")
        if not isinstance(decoder, OSGDecoder):
            raise TypeError(f"the fused kernel implements OSGDecoder, got {type(decoder).__name__}")
        if planes.dim() != 5 or planes.shape[1] != 3 or planes.shape[2] != decoder.n_features:
            raise ValueError(f"planes must be (B, 3, {decoder.n_features}, H, W), got {tuple(planes.shape)}")
        if not runs_on(planes.device):
            raise RuntimeError("the fused triplane decoder runs on CUDA (or under TRITON_INTERPRET=1)")
        if planes.requires_grad and torch.is_grad_enabled():
            raise RuntimeError("the fused triplane decoder has no backward: call it under torch.no_grad()")
        self.batch, _, self.channels, self.height, self.width = planes.shape
        self.hidden = decoder.net[0].out_features
        self.n_out = decoder.out_rgb.out_features
        self.w1, self.b1 = _effective(decoder.net[0])
        self.wr, self.br = _effective(decoder.out_rgb)
        self.ws, self.bs = _effective(decoder.out_sigma)
        scale = torch.as_tensor(box_warp_scale, dtype=torch.float32, device=planes.device).reshape(-1)
        self.scale = (2.0 / (box_warp * scale)).expand(self.batch).contiguous()
        # (B, 3, H, W, C): the C values of a texel side by side, one gather per corner
        self.planes = planes.detach().permute(0, 1, 3, 4, 2).contiguous()

    def __call__(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if points.dim() != 3 or points.shape[0] != self.batch or points.shape[-1] != 3:
            raise ValueError(f"points must be (B={self.batch}, P, 3), got {tuple(points.shape)}")
        if points.requires_grad and torch.is_grad_enabled():
            raise RuntimeError("the fused triplane decoder has no backward: call it under torch.no_grad()")
        p = points.shape[1]
        points = points.float().contiguous()
        rgb = torch.empty(self.batch, p, self.n_out, dtype=torch.float32, device=points.device)
        sigma = torch.empty(self.batch, p, 1, dtype=torch.float32, device=points.device)
        if p == 0:
            return rgb, sigma
        block = _INTERPRETER_BLOCK if interpreting() else BLOCK_POINTS
        grid = ((p + block - 1) // block, self.batch)
        jitted(_decode)[grid](
            points, self.scale, self.planes, self.w1, self.b1, self.wr, self.br, self.ws.reshape(-1), self.bs, rgb,
            sigma, p, self.height, self.width, self.channels, self.hidden, self.n_out,
            C=_padded(self.channels), HID=_padded(self.hidden), OUT=_padded(self.n_out), BLOCK=block)
        return rgb, sigma
