"""The hand-written Triton kernels against the eager paths they replace: the fused triplane-sampling + decoder
kernel (model/rendering/fused_field.py) and the nearest-vertex top-2 pass (model/deformation/nearest_top2.py).

On the CPU the kernel runs through Triton's interpreter (the same kernel source, executed with numpy), so these
tests check its maths wherever Triton is installed; the CUDA test compiles it for real. Triton reads
TRITON_INTERPRET when it is imported, and setting it would also turn every other Triton kernel of the process
(inductor's) into the interpreter, so the interpreter tests run in a child pytest started with it set
(``test_interpreter_tests_pass_in_a_child_process``); in the parent they are skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

import numpy as np  # noqa: E402

from model.cameras import CameraDistribution, sample_cameras  # noqa: E402
from model.deformation import nearest as nr  # noqa: E402
from model.deformation import nearest_top2  # noqa: E402
from model.networks.psi import MOTION_DIM, Psi, PsiConfig  # noqa: E402
from model.rendering import (  # noqa: E402
    ImportanceRenderer,
    OSGDecoder,
    RenderingConfig,
    sample_from_planes,
    triplane_axes,
)
from model.rendering.fused_field import FusedTriplaneDecoder  # noqa: E402


INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
interpreter = pytest.mark.skipif(not INTERPRETING, reason="runs in the TRITON_INTERPRET=1 child process")
N_INTERPRETER_TESTS = 14


@pytest.mark.skipif(INTERPRETING, reason="this is the child")
def test_interpreter_tests_pass_in_a_child_process():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__)),
                           "-m", "not gpu", "-k", "not child_process"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert f"{N_INTERPRETER_TESTS} passed" in done.stdout, done.stdout[-2000:]


def _decoder(n_features: int, hidden: int, n_out: int, seed: int = 0) -> OSGDecoder:
    torch.manual_seed(seed)
    decoder = OSGDecoder(n_features, hidden, n_out, decoder_lr_mul=0.5)
    torch.nn.init.normal_(decoder.out_sigma.weight)  # official zero-init would leave sigma constant
    torch.nn.init.normal_(decoder.out_sigma.bias)
    torch.nn.init.normal_(decoder.net[0].bias)
    return decoder.eval()


def _points(b: int, p: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    points = torch.rand(b, p, 3, generator=g) * 1.8 - 0.9  # box_warp 1.3: some points outside the cube
    points[:, :4] = torch.tensor([[0.65, 0.0, 0.0], [-0.65, 0.65, -0.65], [0.0, 0.0, 0.0], [0.7, -0.7, 0.7]])
    return points


@interpreter
@pytest.mark.parametrize("sizes", [(32, 64, 32), (8, 16, 8), (5, 20, 3)])
@pytest.mark.parametrize("plane_dtype", [torch.float32, torch.bfloat16])
def test_fused_decoder_equals_sampling_then_decoding(sizes, plane_dtype):
    """Any channel widths (padded to the kernel's power-of-two tiles), points inside, on and outside the cube,
    a per-image box scale, bf16 planes (sampled in fp32 on both paths)."""
    n_features, hidden, n_out = sizes
    decoder = _decoder(*sizes)
    g = torch.Generator().manual_seed(2)
    planes = torch.randn(2, 3, n_features, 12, 20, generator=g).to(plane_dtype)
    points = _points(2, 700)
    scale = torch.tensor([1.0, 0.8])
    with torch.no_grad():
        eager = decoder(sample_from_planes(triplane_axes(), planes, points, 1.3, scale))
        rgb, sigma = FusedTriplaneDecoder(planes, decoder, 1.3, scale)(points)
    assert rgb.shape == (2, 700, n_out) and sigma.shape == (2, 700, 1)
    assert rgb.dtype == sigma.dtype == torch.float32
    torch.testing.assert_close(rgb, eager.rgb, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(sigma, eager.sigma, atol=2e-5, rtol=1e-5)
    outside = (points.abs() * 2 / (1.3 * scale.reshape(2, 1, 1)) > 1 + 1 / 12).any(-1)
    assert outside.any() and (~outside).any()  # both kinds of points were in the test


@interpreter
def test_renderer_with_fused_field_equals_eager_render():
    """The whole two-pass render (coarse, importance, merged composite) through a deformation, fused or not."""
    decoder = _decoder(8, 16, 8)
    g = torch.Generator().manual_seed(3)
    planes = torch.randn(2, 3, 8, 16, 16, generator=g)
    cams = sample_cameras(CameraDistribution(), 2, g)["c"]
    cam2world, intrinsics = cams[:, :16].reshape(2, 4, 4), cams[:, 16:].reshape(2, 3, 3)
    cfg = RenderingConfig(depth_resolution=8, depth_resolution_importance=8, perturb=False)
    renderer = ImportanceRenderer()

    def twist(points: torch.Tensor) -> torch.Tensor:
        return points + 0.05 * torch.sin(3 * points.flip(-1))

    with torch.no_grad():
        eager = renderer.render_image(planes, decoder, cam2world, intrinsics, 12, cfg, twist)
        fused = renderer.render_image(planes, decoder, cam2world, intrinsics, 12, cfg, twist, fused=True)
    for a, b in zip(fused, eager):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # with a gradient the eager path runs (the kernel has no backward), so training is unaffected
    planes.requires_grad_()
    with_grad = renderer.render_image(planes, decoder, cam2world, intrinsics, 12, cfg, twist, fused=True)
    with_grad.features.sum().backward()
    assert planes.grad is not None and planes.grad.abs().sum() > 0


@interpreter
def test_psi_fused_field_render_matches_the_eager_render():
    torch.manual_seed(0)
    psi = Psi(PsiConfig.tiny(rendering=RenderingConfig(depth_resolution=6, depth_resolution_importance=6,
                                                       perturb=False))).eval()
    torch.nn.init.normal_(psi.decoder.out_sigma.weight)
    g = torch.Generator().manual_seed(4)
    s = psi.cfg.img_resolution
    image = torch.rand(2, 3, s, s, generator=g) * 2 - 1
    source_motion, motion = torch.randn(2, MOTION_DIM, generator=g), torch.randn(2, MOTION_DIM, generator=g)
    c = sample_cameras(CameraDistribution(), 2, g)["c"]
    with torch.no_grad():
        source = psi.encode_source(image, source_motion)
        eager = psi.render_frame(source, motion, c)
        psi.fused_field = True
        fused = psi.render_frame(source, motion, c)
    for key in ("image", "image_raw", "image_depth", "T_bg"):
        torch.testing.assert_close(fused[key], eager[key], atol=1e-4, rtol=1e-4)


@interpreter
@pytest.mark.parametrize("mouth", [0.0, 1.0])
def test_genhead_fused_field_synthesis_matches_the_eager_synthesis(mouth):
    """GenHead's part field (eye/mouth planes read at the deformed points, face planes, mask blend) through the
    kernel equals the eager field, seeded jitter included."""
    from tests.model.test_genhead import StubDeformer, _cameras, _tiny

    g = _tiny().eval()
    z, c, shape = torch.randn(2, 32), _cameras(2), torch.randn(2, 300)
    deformer = StubDeformer(eye=0.5, mouth=mouth, inside_eye_box=1.0)
    with torch.no_grad():
        eager = g(z, c, c, shape, deformer, noise_mode="const", generator=torch.Generator().manual_seed(0))
        g.fused_field = True
        fused = g(z, c, c, shape, deformer, noise_mode="const", generator=torch.Generator().manual_seed(0))
    for name in ("image", "image_raw", "image_depth", "seg"):
        torch.testing.assert_close(getattr(fused, name), getattr(eager, name), atol=1e-4, rtol=1e-4)


@interpreter
def test_fused_decoder_refuses_what_it_cannot_do(monkeypatch):
    decoder = _decoder(8, 16, 8)
    planes = torch.randn(1, 3, 8, 4, 4)
    with pytest.raises(ValueError, match=r"planes must be \(B, 3, 8, H, W\)"):
        FusedTriplaneDecoder(torch.randn(1, 3, 7, 4, 4), decoder, 1.3)
    with pytest.raises(TypeError, match="OSGDecoder"):
        FusedTriplaneDecoder(planes, lambda f, d=None: f, 1.3)
    with pytest.raises(RuntimeError, match="no backward"):
        FusedTriplaneDecoder(planes.requires_grad_(), decoder, 1.3)
    fused = FusedTriplaneDecoder(planes.detach(), decoder, 1.3)
    with pytest.raises(ValueError, match=r"points must be \(B=1, P, 3\)"):
        fused(torch.zeros(2, 5, 3))
    rgb, sigma = fused(torch.zeros(1, 0, 3))
    assert rgb.shape == (1, 0, 8) and sigma.shape == (1, 0, 1)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="runs on CUDA"):
        FusedTriplaneDecoder(planes.detach(), decoder, 1.3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or INTERPRETING, reason="needs CUDA (and the compiler)")
@pytest.mark.parametrize("plane_dtype", [torch.float32, torch.bfloat16])
def test_fused_decoder_compiled_on_cuda_equals_eager(plane_dtype):
    decoder = _decoder(32, 64, 32).cuda()
    planes = torch.randn(2, 3, 32, 256, 256, device="cuda").to(plane_dtype)
    points = _points(2, 100_000).cuda()
    torch.backends.cuda.matmul.allow_tf32 = False
    with torch.no_grad():
        eager = decoder(sample_from_planes(triplane_axes(), planes, points, 1.3))
        rgb, sigma = FusedTriplaneDecoder(planes, decoder, 1.3)(points)
    torch.testing.assert_close(rgb, eager.rgb, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sigma, eager.sigma, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- nearest-vertex top-2 pass


def _top2_reference(points: torch.Tensor, verts: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The two smallest float32 keys per point, ascending ((dx² + dy²) + dz² as nearest._sq_dist)."""
    keys = nr._sq_dist(points[:, :, None], verts[:, None]).numpy()
    return np.sort(keys, -1)[..., :2], keys


@interpreter
def test_top2_pass_returns_the_two_smallest_keys_with_distinct_ids():
    g = torch.Generator().manual_seed(7)
    verts = torch.randn(2, 150, 3, generator=g) * 0.3  # 150: the last vertex tile is partial
    verts[:, 100] = verts[:, 3]  # a duplicated vertex: both copies must be able to come back
    points = torch.cat([(torch.rand(2, 300, 3, generator=g) - 0.5) * 1.2, verts[:, :20] + 1e-7], dim=1)
    keys, ids = nearest_top2.top2_candidates(points, verts)
    want, all_keys = _top2_reference(points, verts)
    np.testing.assert_allclose(keys.numpy(), want, rtol=4 * 2.0**-24, atol=0)  # FMA may remove roundings
    assert (ids[..., 0] != ids[..., 1]).all()
    # the ids have the keys they come with
    picked = np.take_along_axis(all_keys, ids.numpy(), axis=-1)
    np.testing.assert_allclose(picked, keys.numpy(), rtol=4 * 2.0**-24, atol=0)
    with pytest.raises(ValueError, match="at least 2 vertices"):
        nearest_top2.top2_candidates(points, verts[:, :1])
    with pytest.raises(TypeError, match="float32"):
        nearest_top2.top2_candidates(points.double(), verts.double())


@interpreter
def test_search_with_the_top2_kernel_is_still_the_float64_brute_force(monkeypatch):
    """Through nearest_vertex (float64 rank + re-search of uncertified points), near-ties and lattice ties."""
    assert nearest_top2.enabled("triton", "cpu")  # under the interpreter
    g = torch.Generator().manual_seed(12)
    verts = torch.round(torch.randn(2, 200, 3, generator=g) * 0.3 * 8) / 8  # coincident and lattice vertices
    i, j = torch.randint(0, 200, (2, 2, 300), generator=g)
    mid = (verts.gather(1, i[..., None].expand(-1, -1, 3)) + verts.gather(1, j[..., None].expand(-1, -1, 3))) / 2
    points = torch.cat([(torch.rand(2, 300, 3, generator=g) - 0.5) * 1.2, mid], dim=1)
    calls = []
    real = nearest_top2.top2_candidates
    monkeypatch.setattr(nearest_top2, "top2_candidates", lambda p, v: calls.append(p.shape) or real(p, v))
    hit = nr.nearest_vertex(points, verts, candidates=2, kernel="triton")
    p64, v64 = points.double().numpy()[:, :, None], verts.double().numpy()[:, None]
    dx, dy, dz = (p64 - v64).transpose(3, 0, 1, 2)
    np.testing.assert_array_equal(hit.index.numpy(), (dx * dx + dy * dy + dz * dz).argmin(-1))
    assert calls  # the kernel did the candidate pass


@interpreter
def test_top2_kernel_stays_off_unless_asked(monkeypatch):
    """The default search never calls it; asked for where only compiled Triton could run (a CPU), the torch pass
    runs; a misspelt kernel is refused."""
    calls = []
    monkeypatch.setattr(nearest_top2, "top2_candidates", lambda p, v: calls.append(1))
    verts, points = torch.randn(1, 30, 3), torch.randn(1, 40, 3)
    default = nr.nearest_vertex(points, verts)
    assert not calls and not nearest_top2.enabled("torch", "cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not nearest_top2.enabled("triton", "cpu")  # compiled Triton needs CUDA
    assert torch.equal(nr.nearest_vertex(points, verts, kernel="triton").index, default.index) and not calls
    with pytest.raises(ValueError, match="kernel must be 'torch' or 'triton', got 'cuda'"):
        nr.nearest_vertex(points, verts, kernel="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or INTERPRETING, reason="needs CUDA (and the compiler)")
def test_top2_kernel_compiled_on_cuda_gives_the_float64_answer():
    g = torch.Generator().manual_seed(13)
    verts = torch.randn(4, 3931, 3, generator=g) * 0.3  # GenHead's part-search size
    points = (torch.rand(4, 50_000, 3, generator=g) - 0.5) * 1.2
    keys, ids = nearest_top2.top2_candidates(points.cuda(), verts.cuda())
    want, _ = _top2_reference(points[:, :2000], verts)
    np.testing.assert_allclose(keys[:, :2000].cpu().numpy(), want, rtol=4 * 2.0**-24, atol=0)
    hit = nr.nearest_vertex(points.cuda(), verts.cuda(), kernel="triton")
    p64, v64 = points[:, :2000].double(), verts.double()
    exact = nr._sq_dist(p64[:, :, None], v64[:, None]).argmin(-1)
    assert torch.equal(hit.index[:, :2000].cpu(), exact)
