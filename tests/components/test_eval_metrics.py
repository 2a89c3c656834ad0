"""The evaluate metrics on inputs with a known answer, the bootstrap summary and the gate check."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from components.assets.networks import build_network
from components.evaluate import metrics as M
from components.config.evaluate import METRIC_NAMES, EvaluateConfig, GateRule
from components.evaluate.gate import check_gate, gate_document
from model.cameras import LabelLayout


def _images(n: int = 3, size: int = 64, seed: int = 0, lo: int = 0, hi: int = 256) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # smooth random images (a face-like amount of structure, not white noise)
    coarse = rng.integers(lo, hi, size=(n, size // 8, size // 8, 3)).astype(np.float64)
    return np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2).clip(0, 255).astype(np.uint8)


def _points(n: int, size: int, seed: int = 0) -> np.ndarray:
    """(n, 478, 2) plausible MediaPipe-like points inside the central part of a size² image."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.25 * size, 0.75 * size, size=(n, 478, 2))


def test_identical_images_give_the_metric_bounds():
    torch.manual_seed(0)
    a = _images()
    assert np.all(M.psnr(a, a) == M.PSNR_CAP_DB)
    np.testing.assert_allclose(M.ssim(a, a), 1.0, atol=1e-6)
    lpips = build_network("lpips_vgg", "tiny")
    np.testing.assert_allclose(M.lpips(lpips, a, a), 0.0, atol=1e-7)
    arcface = build_network("arcface_r18", "tiny")
    pts = _points(len(a), 64)
    f = M.identity_features(arcface, a, pts)
    np.testing.assert_allclose(M.cosine(f, f), 1.0, atol=1e-6)


def test_psnr_of_gaussian_noise_matches_its_formula():
    rng = np.random.default_rng(1)
    clean = np.full((2, 128, 128, 3), 128, dtype=np.uint8)  # mid-grey: sigma-10 noise is never clipped
    for sigma in (2.0, 10.0):
        noisy = np.clip(np.round(clean + rng.normal(0, sigma, clean.shape)), 0, 255).astype(np.uint8)
        expected = 10 * math.log10(255**2 / (sigma**2 + 1 / 12))  # + the variance of rounding to integers
        np.testing.assert_allclose(M.psnr(noisy, clean), expected, atol=0.1)


def test_ssim_agrees_with_scikit_image():
    """Two maintained SSIM implementations (same Gaussian window) agree on a photo with noise to 1e-2."""
    import skimage.data
    from skimage.metrics import structural_similarity

    photo = skimage.data.astronaut()[100:228, 150:278]
    rng = np.random.default_rng(0)
    for sigma in (5.0, 20.0):
        noisy = np.clip(photo + rng.normal(0, sigma, photo.shape), 0, 255).astype(np.uint8)
        ref = structural_similarity(photo, noisy, data_range=255, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False)
        assert M.ssim(noisy[None], photo[None])[0] == pytest.approx(ref, abs=1e-2)
        assert ref < 0.95


def test_lpips_and_csim_tell_different_images_apart():
    torch.manual_seed(0)
    a, b = _images(2, seed=4), _images(2, seed=5)
    assert np.all(M.lpips(build_network("lpips_vgg", "tiny"), a, b) > 0)
    arcface = build_network("arcface_r18", "tiny")
    pts = _points(2, 64)
    assert np.all(M.cosine(M.identity_features(arcface, a, pts), M.identity_features(arcface, b, pts)) < 0.999)


def test_images_without_landmarks_have_no_identity():
    arcface = build_network("arcface_r18", "tiny")
    pts = _points(2, 64)
    pts[1] = np.nan
    f = M.identity_features(arcface, _images(2), pts)
    assert np.isfinite(f[0]).all() and np.isnan(f[1]).all()
    sim = M.cosine(f, f)
    assert sim[0] == pytest.approx(1.0, abs=1e-6) and np.isnan(sim[1])


def test_shifted_landmarks_give_the_shift_as_akd():
    pts = _points(3, 512)
    shifted = pts + np.array([3.0, 4.0])
    np.testing.assert_allclose(M.keypoint_distance(shifted, pts, 512), 5.0)
    # measured on 64² images, the same shift is 8x larger at the protocol's 512²
    np.testing.assert_allclose(M.keypoint_distance(shifted, pts, 64), 40.0)


def test_swapped_expression_parameters_give_a_known_aed():
    a = np.zeros((2, 437), np.float32)
    a[:, LabelLayout.EXPRESSION.start] = 1.0  # expression 0 = 1, expression 1 = 0
    b = a.copy()
    b[:, LabelLayout.EXPRESSION.start], b[:, LabelLayout.EXPRESSION.start + 1] = 0.0, 1.0  # swapped
    b[:, LabelLayout.SHAPE] = 5.0  # identity and camera do not count
    b[:, LabelLayout.CAMERA] = 7.0
    n_params = 100 + 3  # expression + jaw
    np.testing.assert_allclose(M.expression_distance(a, b), 2 / n_params, rtol=1e-6)
    assert np.all(M.pose_distance(a, b) == 0)
    b[:, LabelLayout.JAW_POSE.start] = 0.3
    np.testing.assert_allclose(M.expression_distance(a, b), 2.3 / n_params, rtol=1e-6)
    b[:, LabelLayout.NECK_POSE] = [0.1, -0.2, 0.0]
    np.testing.assert_allclose(M.pose_distance(a, b), 0.3 / 3, rtol=1e-6)


def test_summary_mean_interval_and_count():
    values = np.array([1.0, 2.0, 3.0, 10.0, np.nan])
    groups = ["a", "a", "b", "c", "c"]
    s = M.summarize(values, groups, samples=500, seed=0)
    assert s.mean == pytest.approx(4.0) and s.count == 4
    assert 1.0 <= s.low < s.mean < s.high <= 10.0
    assert M.summarize(values, groups, samples=500, seed=0) == s  # fixed seed: the same interval
    one = M.summarize(np.array([2.0, 4.0]), ["a", "a"], samples=100, seed=0)
    assert (one.mean, one.low, one.high, one.count) == (3.0, 3.0, 3.0, 2)
    none = M.summarize(np.array([np.nan]), ["a"], samples=100, seed=0)
    assert none.count == 0 and math.isnan(none.mean)
    flat = M.summarize(np.full(6, 0.5), list("aabbcc"), samples=100, seed=0)
    assert (flat.low, flat.high) == (0.5, 0.5)


def test_gate_document_and_check():
    cfg = EvaluateConfig(gate={"eval/self/psnr": GateRule(threshold=20.0, max_regression=0.05),
                               "eval/self/lpips": GateRule(threshold=0.3, max_regression=0.1)})
    doc = gate_document(cfg)
    assert set(doc["metrics"]) == set(METRIC_NAMES)
    assert doc["metrics"]["eval/self/psnr"] == {"greater_is_better": True, "threshold": 20.0, "max_regression": 0.05}
    assert doc["metrics"]["eval/self/lpips"]["greater_is_better"] is False
    # the paper defaults fill every rule not given
    assert doc["metrics"]["eval/self/ssim"]["threshold"] == 0.5
    outcomes = {o.name: o for o in check_gate({"eval/self/psnr": 21.0, "eval/self/lpips": 0.2}, doc,
                                              {"eval/self/psnr": 23.0, "eval/self/lpips": 0.19})}
    assert outcomes["eval/self/psnr"].passed is False and "8.7% worse" in outcomes["eval/self/psnr"].detail
    assert outcomes["eval/self/lpips"].passed is True  # 5.3% worse, 10% allowed
    assert outcomes["eval/self/ssim"].passed is None  # not computed
    failing = {o.name: o for o in check_gate({"eval/self/lpips": 0.35}, doc)}
    assert failing["eval/self/lpips"].passed is False and "not <= 0.3" in failing["eval/self/lpips"].detail


def test_gate_rejects_unknown_metric_names():
    with pytest.raises(ValueError, match="unknown metric"):
        EvaluateConfig(gate={"eval/self/pnsr": GateRule(threshold=1.0)})


# ------------------------------------------------------------------------------------------ FID
def test_frechet_distance_of_known_gaussians():
    from components.evaluate.fid import frechet_distance

    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 5))
    sigma = a @ a.T + np.eye(5)  # a full-rank covariance
    mu = rng.normal(size=5)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)
    # 1-D N(0, 1) vs N(1, 4): (0 - 1)² + 1 + 4 - 2 sqrt(1 * 4) = 2
    assert frechet_distance(np.array([0.0]), np.array([[1.0]]), np.array([1.0]), np.array([[4.0]])) == pytest.approx(2)
    # diagonal covariances: |dmu|² + sum (sqrt(a_i) - sqrt(b_i))²
    va, vb, dmu = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 16.0]), np.array([1.0, 2.0, 0.0])
    expected = dmu @ dmu + np.sum((np.sqrt(va) - np.sqrt(vb)) ** 2)
    assert frechet_distance(dmu, np.diag(va), np.zeros(3), np.diag(vb)) == pytest.approx(expected)


def test_frechet_distance_refuses_what_has_no_real_answer():
    from components.evaluate.fid import FIDError, feature_statistics, frechet_distance

    with pytest.raises(FIDError, match="no real square root"):  # a "covariance" with a negative variance
        frechet_distance(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2))
    with pytest.raises(FIDError, match="differ in size"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(FIDError, match=">= 2 feature vectors"):
        feature_statistics(np.ones((1, 4)))
    mu, sigma = feature_statistics(np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 8.0]]))
    np.testing.assert_allclose(mu, [2.0, 4.0])
    np.testing.assert_allclose(sigma, [[4.0, 7.0], [7.0, 13.0]])  # unbiased (N - 1), as pytorch-fid's np.cov


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    """A seeded FID Inception weights file in torch's legacy format, with the BN counters a torchvision-built
    state dict carries (both must load), and the network it came from."""
    from tests.components.fid_inception_file import write_seeded_inception

    path = tmp_path_factory.mktemp("fid") / "weights" / "pt_inception-2015-12-05.pth"
    return path, write_seeded_inception(path, seed=1, legacy_format=True, bn_counters=True)


def test_inception_weights_load_strictly_and_give_the_source_features(inception_file):
    from components.assets.fid_inception import load_inception
    from components.evaluate.fid import inception_features

    path, source = inception_file
    net = load_inception(path)
    images = _images(n=2, size=64, seed=3)
    features = inception_features(net, images, batch=1)  # batched one by one: same as all at once
    assert features.shape == (2, 2048) and features.dtype == np.float64
    with torch.no_grad():
        expected = source(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255).double().numpy()
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)


def test_wrong_inception_file_names_the_file_and_keys(inception_file, tmp_path):
    from components.assets.fid_inception import load_inception
    from components.import_official.errors import KeyMismatchError, OfficialImportError

    state = torch.load(inception_file[0], weights_only=True)
    del state["Mixed_7c.branch_pool.conv.weight"]
    state["fc.weight"] = state["fc.weight"][:1000]  # torchvision's 1000-class head
    bad = tmp_path / "inception.pth"
    torch.save(state, bad)
    with pytest.raises(KeyMismatchError) as err:
        load_inception(bad)
    message = str(err.value)
    assert message.startswith(str(bad)) and "1 missing: 'Mixed_7c.branch_pool.conv.weight'" in message
    assert "'fc.weight' is (1000, 2048), expected (1008, 2048)" in message
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(OfficialImportError, match="not a plain PyTorch state dict"):
        load_inception(bad)


@pytest.mark.slow  # two 2048² matrix square roots (~12 s each on one core)
def test_fid_of_a_set_against_itself_is_zero(inception_file):
    from components.assets.fid_inception import load_inception
    from components.evaluate.fid import fid

    net = load_inception(inception_file[0])
    a, b = _images(n=4, size=64, seed=4), _images(n=4, size=64, seed=5, lo=100, hi=160)  # b: low contrast
    same = fid(net, a, a)
    other = fid(net, a, b)
    assert abs(same) < 1e-3 * other and other > 0


def test_assets_check_reads_the_inception_file(inception_file, tmp_path, capsys):
    from pipelines.cli import main

    path, _ = inception_file
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / path.name).write_bytes(path.read_bytes())
    assert main(["assets", "check", "--dir", str(tmp_path)]) == 1  # the required assets are missing here
    line = next(x for x in capsys.readouterr().out.splitlines() if " fid_inception " in x)
    assert line.startswith("ok ") and "472 tensors match the FID Inception-v3" in line and "SYNTHETIC" not in line
    state = torch.load(path, weights_only=True)
    state["fc.bias"] = torch.zeros(1000)
    torch.save(state, tmp_path / "weights" / path.name)
    main(["assets", "check", "--dir", str(tmp_path)])
    line = next(x for x in capsys.readouterr().out.splitlines() if " fid_inception " in x)
    assert line.startswith("wrong format ") and "'fc.bias' is (1000), expected (1008)" in line
