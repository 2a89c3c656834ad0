"""Tests for model.flame: safe FLAME pickle I/O, the synthetic head, FlameLayer and landmarks."""

from __future__ import annotations

import base64
import builtins
import os
import pickle
import pickletools
import subprocess

import numpy as np
import pytest
import torch

from model.cameras import LABEL_DIM, LabelLayout
from model.flame import (
    FlameConfig,
    FlameFileError,
    FlameLayer,
    LandmarkEmbedding,
    UnsafePickleError,
    batch_rodrigues,
    flame_params_from_label,
    landmarks_from_vertices,
    load_flame_pickle,
    load_landmark_embeddings,
    load_pickled_npy,
    select_dynamic_contour,
    synthetic_flame_arrays,
    write_flame_pickle,
)

# A genuine FLAME-format pickle written by Python 2.7 cPickle (protocol 2) with chumpy 0.69
# (shapedirs = Ch) and scipy 1.2.3 (J_regressor = csc_matrix): the layout of generic_model.pkl.
GENUINE_PY2_CHUMPY_PICKLE = base64.b64decode(
    "gAJ9cQEoVQFmY251bXB5LmNvcmUubXVsdGlhcnJheQpfcmVjb25zdHJ1Y3QKcQJjbnVtcHkKbmRhcnJheQpxA0sAhVUBYodS"
    "cQQoSwFLAksDhmNudW1weQpkdHlwZQpxBVUCdTRLAEsBh1JxBihLA1UBPE5OTkr/////Sv////9LAHRiiVUYAAAAAAEAAAAC"
    "AAAAAAAAAAIAAAADAAAAdGJVC0pfcmVncmVzc29ycQdjc2NpcHkuc3BhcnNlLmNzYwpjc2NfbWF0cml4CnEIKYFxCX1xCihV"
    "B2luZGljZXNxC2gCaANLAIVVAWKHUnEMKEsBSwSFaAVVAmk0SwBLAYdScQ0oSwNVATxOTk5K/////0r/////SwB0YolVEAAA"
    "AAABAAAAAAAAAAEAAAB0YlUEZGF0YXEOaAJoA0sAhVUBYodScQ8oSwFLBIVoBVUCZjhLAEsBh1JxEChLA1UBPE5OTkr/////"
    "Sv////9LAHRiiVUgAAAAAAAA4D8AAAAAAADQPwAAAAAAAOA/AAAAAAAA6D90YlUIbWF4cHJpbnRxEUsyVQZfc2hhcGVxEksC"
    "SwSGVQZpbmRwdHJxE2gCaANLAIVVAWKHUnEUKEsBSwWFaA2JVRQAAAAAAQAAAAIAAAADAAAABAAAAHRidWJVDWtpbnRyZWVf"
    "dGFibGVxFWgCaANLAIVVAWKHUnEWKEsBSwJLAoZoBVUCaThLAEsBh1JxFyhLA1UBPE5OTkr/////Sv////9LAHRiiVUg////"
    "/wAAAAAAAAAAAAAAAAAAAAAAAAAAAQAAAAAAAAB0YlUIYnNfc3R5bGVxGFUDbGJzcRlVCnZfdGVtcGxhdGVxGmgCaANLAIVV"
    "AWKHUnEbKEsBSwRLA4ZoEIlVYAAAAAAAAAAAmpmZmZmZuT+amZmZmZnJPzMzMzMzM9M/mpmZmZmZ2T8AAAAAAADgPzMzMzMz"
    "M+M/ZmZmZmZm5j+amZmZmZnpP83MzMzMzOw/AAAAAAAA8D+amZmZmZnxP3RiVQlzaGFwZWRpcnNxHGNjaHVtcHkuY2gKQ2gK"
    "cR0pgXEefXEfKFUMX21ha2Vfc3BhcnNlcSCJVQtfZGlydHlfdmFyc3EhY19fYnVpbHRpbl9fCnNldApxIl2FUnEjVQRfaXRy"
    "cSROVRBfZGVwZW5kc19vbl9kZXBzcSV9cSZVC19tYWtlX2RlbnNlcSeJVQF4aAJoA0sAhVUBYodScSgoSwFLBEsDSwKHaBCJ"
    "VcAAAAAAAADwv9Sb3vSmN+2/pze96U1v6r9605ve9Kbnv05vetOb3uS/IgtZyEIW4r/qTW9605vev5CFLGQhC9m/OL3pTW96"
    "07/A6U1vetPLvwxZyEIWssC/YCELWchCpr9gIQtZyEKmPwhZyEIWssA/wOlNb3rTyz84velNb3rTP5CFLGQhC9k/6E1vetOb"
    "3j8gC1nIQhbiP05vetOb3uQ/etOb3vSm5z+mN73pTW/qP9Sb3vSmN+0/AAAAAAAA8D90YlUHX3N0YXR1c3EpVQNuZXdxKnVi"
    "dS4="
)


@pytest.fixture(scope="module")
def arrays() -> dict:
    return synthetic_flame_arrays(seed=0)


@pytest.fixture(scope="module")
def layer(arrays) -> FlameLayer:
    return FlameLayer(arrays)


def _zeros(layer: FlameLayer, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(batch, layer.config.n_shape), torch.zeros(batch, layer.config.n_expression)


# --- restricted reading and chumpy-format writing ---------------------------------------------


def test_write_then_load_round_trips_values_and_dtypes(arrays, tmp_path):
    path = tmp_path / "generic_model.pkl"
    write_flame_pickle(path, arrays)
    loaded = load_flame_pickle(path)
    assert sorted(loaded) == sorted(arrays)
    for key, value in arrays.items():
        if isinstance(value, str):
            assert loaded[key] == value
        else:
            assert loaded[key].dtype == value.dtype, key
            assert loaded[key].shape == value.shape, key
            assert np.array_equal(loaded[key], value), key


def test_written_pickle_uses_the_official_classes(arrays, tmp_path):
    path = tmp_path / "generic_model.pkl"
    write_flame_pickle(path, arrays)
    data = path.read_bytes()
    assert data[:2] == b"\x80\x02"  # protocol 2, as Python 2 cPickle wrote it
    names = {arg for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}
    assert names == {
        "chumpy.ch Ch",
        "scipy.sparse.csc csc_matrix",
        "numpy.core.multiarray _reconstruct",
        "numpy ndarray",
        "numpy dtype",
        "__builtin__ set",
    }


def test_stock_unpickler_needs_chumpy_for_the_written_file(arrays, tmp_path):
    pytest.importorskip("scipy")
    if _module_exists("chumpy"):
        pytest.skip("chumpy is installed here")
    path = tmp_path / "generic_model.pkl"
    write_flame_pickle(path, arrays)
    with pytest.raises(ModuleNotFoundError, match="chumpy"):
        pickle.loads(path.read_bytes(), encoding="latin1")


def _module_exists(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def test_genuine_python2_chumpy_pickle_is_read(tmp_path):
    path = tmp_path / "py2.pkl"
    path.write_bytes(GENUINE_PY2_CHUMPY_PICKLE)
    loaded = load_flame_pickle(path)
    assert loaded["bs_style"] == "lbs"
    assert loaded["f"].dtype == np.uint32 and loaded["f"].tolist() == [[0, 1, 2], [0, 2, 3]]
    assert loaded["kintree_table"].tolist() == [[4294967295, 0], [0, 1]]
    np.testing.assert_array_equal(loaded["v_template"], np.arange(12.0).reshape(4, 3) / 10.0)
    np.testing.assert_array_equal(loaded["shapedirs"], np.linspace(-1, 1, 24).reshape(4, 3, 2))
    np.testing.assert_array_equal(loaded["J_regressor"], [[0.5, 0, 0.5, 0], [0, 0.25, 0, 0.75]])


def test_pickled_npy_matches_numpy_allow_pickle(tmp_path):
    content = {"static_lmk_faces_idx": np.arange(5), "static_lmk_bary_coords": np.full((5, 3), 1 / 3), "n": 3}
    path = tmp_path / "embedding.npy"
    np.save(path, content, allow_pickle=True)
    loaded = load_pickled_npy(path)
    assert loaded.keys() == content.keys()
    np.testing.assert_array_equal(loaded["static_lmk_faces_idx"], content["static_lmk_faces_idx"])
    np.testing.assert_array_equal(loaded["static_lmk_bary_coords"], content["static_lmk_bary_coords"])
    assert loaded["n"] == 3


def test_plain_npy_is_read_without_pickle(tmp_path):
    path = tmp_path / "plain.npy"
    np.save(path, np.arange(6, dtype=np.int16).reshape(2, 3), allow_pickle=False)
    loaded = load_pickled_npy(path)
    assert loaded.dtype == np.int16 and loaded.tolist() == [[0, 1, 2], [3, 4, 5]]


class _Reduce:
    """Pickles as a call to ``fn(*args)``: what a hostile model file would contain."""

    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _hostile_payloads(marker) -> dict[str, object]:
    return {
        "posix.system": _Reduce(os.system, (f"touch {marker}",)),
        "builtins.exec": _Reduce(builtins.exec, (f"open({str(marker)!r}, 'w').close()",)),
        "subprocess.Popen": _Reduce(subprocess.Popen, (["touch", str(marker)],)),
    }


@pytest.mark.parametrize("protocol", [0, 2, 4])
@pytest.mark.parametrize("name", ["posix.system", "builtins.exec", "subprocess.Popen"])
def test_hostile_pickle_is_refused_without_side_effect(tmp_path, name, protocol):
    marker = tmp_path / "pwned"
    payload = {"v_template": np.zeros((2, 3)), "evil": _hostile_payloads(marker)[name]}
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(pickle.dumps(payload, protocol=protocol))
    # Protocols < 3 write Python-2 module names (__builtin__, commands); the error names the file's.
    module, attr = name.split(".")
    pattern = {"builtins": "(builtins|__builtin__)", "subprocess": "(subprocess|commands)"}.get(module, module) + r"\." + attr
    with pytest.raises(UnsafePickleError, match=pattern) as info:
        load_flame_pickle(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_hostile_payload_is_live_under_the_stock_unpickler(tmp_path):
    # Control: the payload above really runs code when read the naive way.
    marker = tmp_path / "pwned"
    data = pickle.dumps(_hostile_payloads(marker)["builtins.exec"], protocol=2)
    pickle.loads(data)
    assert marker.exists()


def test_hostile_npy_is_refused_without_side_effect(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "landmark_embedding.npy"
    array = np.empty((), dtype=object)
    array[()] = {"static_lmk_faces_idx": _hostile_payloads(marker)["posix.system"]}
    np.save(path, array, allow_pickle=True)
    with pytest.raises(UnsafePickleError, match=r"posix\.system"):
        load_pickled_npy(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "data",
    [
        b"\x80\x02cnumpy\nndarray\nK\x03\x85R.",  # ndarray(3): only _reconstruct may build arrays
        b"\x80\x02cchumpy.ch\nCh\nK\x01\x85R.",  # running Ch's constructor
        b"\x80\x02cchumpy.ch\nCh\nU\x04evil\x85\x81.",  # NEWOBJ with arguments
        b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\ndtype\nK\x00\x85U\x01b\x87R.",
        b"\x80\x02cscipy.sparse.csc\ncsc_matrix\nK\x02K\x02\x86\x85R.",
    ],
)
def test_allowed_globals_cannot_be_called_freely(tmp_path, data):
    path = tmp_path / "crafted.pkl"
    path.write_bytes(data)
    with pytest.raises(UnsafePickleError):
        load_flame_pickle(path)


def test_truncated_foreign_and_missing_files_name_the_path(arrays, tmp_path):
    good = tmp_path / "good.pkl"
    write_flame_pickle(good, arrays)
    cases = {
        "truncated.pkl": good.read_bytes()[: len(good.read_bytes()) // 2],
        "image.pkl": b"\x89PNG\r\n\x1a\n" + bytes(100),
        "empty.pkl": b"",
        "list.pkl": pickle.dumps([1, 2, 3], protocol=2),
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(FlameFileError) as info:
            load_flame_pickle(path)
        assert str(path) in str(info.value), name
    with pytest.raises(FileNotFoundError, match="nope.pkl"):
        load_flame_pickle(tmp_path / "nope.pkl")
    not_npy = tmp_path / "x.npy"
    not_npy.write_bytes(b"hello world")
    with pytest.raises(FlameFileError, match="x.npy"):
        load_pickled_npy(not_npy)


# --- synthetic head -------------------------------------------------------------------------------


def _directed_edges(faces: np.ndarray) -> np.ndarray:
    return np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])


@pytest.mark.parametrize("n_vertices", [None, 700])
def test_synthetic_mesh_is_closed_and_outward(n_vertices):
    arrays = synthetic_flame_arrays(seed=3, n_vertices=n_vertices)
    v, f = arrays["v_template"], arrays["f"].astype(np.int64)
    assert v.shape[0] == (642 if n_vertices is None else n_vertices)
    edges = _directed_edges(f)
    # Closed and consistently oriented: every directed edge once, and its reverse present too.
    assert len({tuple(e) for e in edges}) == len(edges)
    assert {tuple(e) for e in edges} == {tuple(e[::-1]) for e in edges}
    assert len(f) == 2 * len(v) - 4  # Euler characteristic of a sphere
    signed_volume = np.einsum("ij,ij->i", v[f[:, 0]], np.cross(v[f[:, 1]], v[f[:, 2]])).sum() / 6
    assert signed_volume > 0


def test_synthetic_arrays_are_self_consistent(arrays):
    n_vertices = arrays["v_template"].shape[0]
    assert arrays["shapedirs"].shape == (n_vertices, 3, 400)
    assert arrays["posedirs"].shape == (n_vertices, 3, 36)
    assert arrays["kintree_table"].tolist() == [[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]]
    np.testing.assert_allclose(arrays["weights"].sum(1), 1.0, atol=1e-12)
    assert (arrays["weights"] >= 0).all()
    np.testing.assert_allclose(arrays["J_regressor"].sum(1), 1.0, atol=1e-12)
    np.testing.assert_allclose(arrays["J"], arrays["J_regressor"] @ arrays["v_template"])
    left_eye, right_eye = arrays["J"][3], arrays["J"][4]
    assert left_eye[0] > 0 > right_eye[0] and left_eye[2] > 0  # subject's left is +x, face looks +z
    # The 400 directions are independent, so fitted coefficients are identifiable.
    flat = arrays["shapedirs"].reshape(-1, 400)
    assert np.linalg.matrix_rank(flat) == 400


def test_synthetic_arrays_are_deterministic_per_seed():
    a, b, c = synthetic_flame_arrays(5, 100), synthetic_flame_arrays(5, 100), synthetic_flame_arrays(6, 100)
    assert np.array_equal(a["shapedirs"], b["shapedirs"])
    assert not np.array_equal(a["shapedirs"], c["shapedirs"])


def test_full_size_synthetic_bundle_has_flame_vertex_count(tmp_path):
    arrays = synthetic_flame_arrays(seed=1, n_vertices=5023)
    assert arrays["v_template"].shape == (5023, 3) and arrays["shapedirs"].shape == (5023, 3, 400)
    path = tmp_path / "generic_model.pkl"
    write_flame_pickle(path, arrays)
    loaded = load_flame_pickle(path)
    assert np.array_equal(loaded["shapedirs"], arrays["shapedirs"])
    assert FlameLayer(loaded).n_vertices == 5023


# --- FlameLayer -------------------------------------------------------------------------------------


def test_zero_parameters_give_the_template_exactly(layer):
    out = layer(*_zeros(layer, 3))
    assert out.vertices.shape == (3, layer.n_vertices, 3) and out.joints.shape == (3, 5, 3)
    assert torch.equal(out.vertices, layer.v_template.expand(3, -1, -1))
    assert torch.equal(out.joint_transforms, torch.eye(4).expand(3, 5, 4, 4))
    assert list(layer.buffers()) and not list(layer.parameters())


def test_shape_and_expression_are_linear(layer):
    gen = torch.Generator().manual_seed(0)
    s1, s2 = torch.randn(2, 1, 300, generator=gen)
    e1, e2 = torch.randn(2, 1, 100, generator=gen)
    z_s, z_e = _zeros(layer, 1)

    def offset(shape, expression):
        return layer(shape, expression).vertices - layer.v_template

    torch.testing.assert_close(offset(2 * s1 - s2, z_e), 2 * offset(s1, z_e) - offset(s2, z_e), atol=1e-6, rtol=0)
    torch.testing.assert_close(offset(z_s, e1 + e2), offset(z_s, e1) + offset(z_s, e2), atol=1e-6, rtol=0)
    torch.testing.assert_close(offset(s1, e1), offset(s1, z_e) + offset(z_s, e1), atol=1e-6, rtol=0)
    assert offset(s1, z_e).abs().max() > 1e-3  # the directions actually move the mesh


def test_global_rotation_is_rigid_about_root_joint(layer):
    shape = torch.randn(1, 300, generator=torch.Generator().manual_seed(1))
    rest = layer(shape, torch.zeros(1, 100))
    axis_angle = torch.tensor([[0.3, -0.5, 0.2]])
    posed = layer(shape, torch.zeros(1, 100), global_pose=axis_angle)
    rotation = batch_rodrigues(axis_angle)[0]
    root = rest.joints[0, 0]
    expected = (rest.vertices[0] - root) @ rotation.T + root
    torch.testing.assert_close(posed.vertices[0], expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(posed.joints[0, 0], root)


def test_jaw_rotation_blends_by_skinning_weight(arrays):
    no_correctives = dict(arrays, posedirs=np.zeros_like(arrays["posedirs"]))
    layer = FlameLayer(no_correctives)
    jaw = torch.tensor([[0.25, 0.0, 0.0]])
    out = layer(*_zeros(layer, 1), jaw_pose=jaw)
    v = layer.v_template
    j_jaw = layer.J_regressor[2] @ v
    rotated = (v - j_jaw) @ batch_rodrigues(jaw)[0].T + j_jaw
    w = layer.lbs_weights[:, 2:3]
    torch.testing.assert_close(out.vertices[0], w * rotated + (1 - w) * v, atol=1e-6, rtol=0)
    # Only vertices that carry jaw weight move.
    moved = (out.vertices[0] - v).norm(dim=1) > 1e-7
    assert moved.any() and bool((layer.lbs_weights[moved, 2] > 0).all())


def test_pose_correctives_are_added_for_non_root_joints(arrays):
    layer = FlameLayer(arrays)
    flat = FlameLayer(dict(arrays, posedirs=np.zeros_like(arrays["posedirs"])))
    z = _zeros(layer, 1)
    global_only = torch.tensor([[0.2, 0.1, 0.0]])
    torch.testing.assert_close(layer(*z, global_pose=global_only).vertices, flat(*z, global_pose=global_only).vertices)
    jaw = torch.tensor([[0.3, 0.0, 0.0]])
    assert (layer(*z, jaw_pose=jaw).vertices - flat(*z, jaw_pose=jaw).vertices).abs().max() > 1e-6


def test_neck_rotates_children_about_the_neck_joint(layer):
    z = _zeros(layer, 1)
    rest = layer(*z).joints[0]
    neck = torch.tensor([[0.0, 0.4, 0.0]])
    posed = layer(*z, neck_pose=neck).joints[0]
    torch.testing.assert_close(posed[:2], rest[:2])  # global and neck joints stay put
    expected = (rest[2:] - rest[1]) @ batch_rodrigues(neck)[0].T + rest[1]
    torch.testing.assert_close(posed[2:], expected, atol=1e-6, rtol=0)


def test_label_slices_drive_neck_jaw_and_eyes(arrays):
    layer = FlameLayer(dict(arrays, posedirs=np.zeros_like(arrays["posedirs"])))
    label = torch.zeros(1, LABEL_DIM)
    label[0, LabelLayout.EYE_POSE] = torch.tensor([0.0, 0.3, 0.0, 0.0, 0.0, 0.0])
    params = flame_params_from_label(label)
    out = layer(**params)
    moved = (out.vertices[0] - layer.v_template).norm(dim=1) > 1e-7
    # Eye slice [431:434] drives joint 3 (left eye): only left-eye-weighted vertices move.
    assert moved.any() and bool((layer.lbs_weights[moved, 3] > 0).all())
    assert bool((layer.lbs_weights[moved, 3] >= layer.lbs_weights[moved, 4]).all())
    # Neck slice [425:428] drives joint 1: global and neck joints stay, jaw and eyes swing about it.
    label = torch.zeros(1, LABEL_DIM)
    label[0, LabelLayout.NECK_POSE] = torch.tensor([0.3, 0.0, 0.0])  # pitch: jaw is below the neck
    joints = layer(**flame_params_from_label(label)).joints[0]
    rest = layer(*_zeros(layer, 1)).joints[0]
    torch.testing.assert_close(joints[:2], rest[:2])
    assert (joints[2:] - rest[2:]).norm(dim=1).min() > 1e-3
    # Jaw slice [428:431] drives joint 2: only jaw-weighted vertices move.
    label = torch.zeros(1, LABEL_DIM)
    label[0, LabelLayout.JAW_POSE] = torch.tensor([0.2, 0.0, 0.0])
    moved = (layer(**flame_params_from_label(label)).vertices[0] - layer.v_template).norm(dim=1) > 1e-7
    assert moved.any() and bool((layer.lbs_weights[moved, 2] > 0).all())
    with pytest.raises(ValueError, match="437"):
        flame_params_from_label(torch.zeros(1, 436))


def test_gradients_reach_every_input(layer):
    torch.manual_seed(0)
    inputs = {
        "shape": torch.randn(2, 300) * 0.5,
        "expression": torch.randn(2, 100) * 0.5,
        "global_pose": torch.randn(2, 3) * 0.2,
        "neck_pose": torch.randn(2, 3) * 0.2,
        "jaw_pose": torch.randn(2, 3) * 0.2,
        "eye_pose": torch.randn(2, 6) * 0.2,
    }
    for value in inputs.values():
        value.requires_grad_(True)
    out = layer(**inputs)
    (out.vertices.square().sum() + out.joints.square().sum()).backward()
    for name, value in inputs.items():
        assert value.grad is not None and torch.isfinite(value.grad).all(), name
        assert value.grad.abs().max() > 0, name


def test_gradcheck_in_double_with_pose_correctives():
    arrays = synthetic_flame_arrays(seed=2, n_vertices=42)
    layer = FlameLayer(arrays, config=FlameConfig(n_shape=4, n_expression=3, detach_pose_correctives=False)).double()

    def vertices(shape, jaw, neck):
        return layer(shape, torch.zeros(1, 3, dtype=torch.float64), neck_pose=neck, jaw_pose=jaw).vertices

    args = (torch.randn(1, 4, dtype=torch.float64), torch.randn(1, 3, dtype=torch.float64) * 0.3,
            torch.zeros(1, 3, dtype=torch.float64))  # fmt: skip
    assert torch.autograd.gradcheck(vertices, tuple(a.requires_grad_() for a in args), fast_mode=True)


def test_subset_of_coefficients_matches_full_layer(arrays, layer):
    small = FlameLayer(arrays, n_shape=10, n_expression=5)
    gen = torch.Generator().manual_seed(4)
    shape, expression = torch.randn(1, 10, generator=gen), torch.randn(1, 5, generator=gen)
    full = layer(
        torch.cat([shape, torch.zeros(1, 290)], 1), torch.cat([expression, torch.zeros(1, 95)], 1)
    ).vertices
    torch.testing.assert_close(small(shape, expression).vertices, full)
    assert FlameConfig.tiny().n_shape < FlameConfig().n_shape == 300


def test_bad_inputs_raise_clear_errors(arrays, layer):
    with pytest.raises(ValueError, match=r"shape must be \(B, 300\)"):
        layer(torch.zeros(1, 299), torch.zeros(1, 100))
    with pytest.raises(ValueError, match="jaw_pose"):
        layer(*_zeros(layer, 2), jaw_pose=torch.zeros(1, 3))
    with pytest.raises(KeyError, match="weights"):
        FlameLayer({k: v for k, v in arrays.items() if k != "weights"})
    with pytest.raises(ValueError, match="posedirs"):
        FlameLayer(dict(arrays, posedirs=arrays["posedirs"][:, :, :35]))
    with pytest.raises(ValueError):
        FlameLayer(arrays, n_expression=101)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(layer):
    gen = torch.Generator().manual_seed(0)
    shape, expression, jaw = torch.randn(2, 300, generator=gen), torch.randn(2, 100, generator=gen), torch.rand(2, 3, generator=gen)
    cpu = layer(shape, expression, jaw_pose=jaw).vertices
    gpu = FlameLayer(synthetic_flame_arrays(seed=0)).cuda()(shape.cuda(), expression.cuda(), jaw_pose=jaw.cuda()).vertices
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=1e-5)


# --- rotations and landmarks -----------------------------------------------------------------------


def test_batch_rodrigues_known_rotations_and_identity():
    quarter_z = batch_rodrigues(torch.tensor([[0.0, 0.0, torch.pi / 2]]))[0]
    torch.testing.assert_close(quarter_z @ torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0]))
    assert torch.equal(batch_rodrigues(torch.zeros(2, 3)), torch.eye(3).expand(2, 3, 3))
    aa = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
    rot = batch_rodrigues(aa)
    torch.testing.assert_close(rot @ rot.transpose(1, 2), torch.eye(3).expand(16, 3, 3), atol=1e-5, rtol=0)
    zero = torch.zeros(1, 3, requires_grad=True)
    batch_rodrigues(zero)[0, 1, 0].backward()  # d R[1,0] / d aa_z = 1 at rest
    torch.testing.assert_close(zero.grad, torch.tensor([[0.0, 0.0, 1.0]]))
    with pytest.raises(ValueError):
        batch_rodrigues(torch.zeros(3))


def test_batch_rodrigues_agrees_with_kornia():
    kornia = pytest.importorskip("kornia")
    aa = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
    expected = kornia.geometry.conversions.axis_angle_to_rotation_matrix(aa)
    torch.testing.assert_close(batch_rodrigues(aa), expected, atol=1e-5, rtol=0)


def test_landmarks_are_barycentric_points(layer):
    out = layer(*_zeros(layer, 2))
    faces = layer.faces
    emb = LandmarkEmbedding(torch.tensor([0, 5, 7]), torch.tensor([[1.0, 0, 0], [0, 0, 1.0], [1 / 3, 1 / 3, 1 / 3]]))
    lmk = landmarks_from_vertices(out.vertices, faces, emb)
    v = out.vertices[0]
    assert lmk.shape == (2, 3, 3)
    torch.testing.assert_close(lmk[0, 0], v[faces[0, 0]])
    torch.testing.assert_close(lmk[0, 1], v[faces[5, 2]])
    torch.testing.assert_close(lmk[1, 2], v[faces[7]].mean(0))
    per_sample = LandmarkEmbedding(torch.tensor([[0], [5]]), torch.tensor([[[1.0, 0, 0]], [[0, 1.0, 0]]]))
    lmk2 = landmarks_from_vertices(out.vertices, faces, per_sample)
    torch.testing.assert_close(lmk2[:, 0], torch.stack([v[faces[0, 0]], v[faces[5, 1]]]))
    with pytest.raises(ValueError):
        LandmarkEmbedding(torch.tensor([0, 1]), torch.zeros(3, 3))


def test_official_embedding_files_load(tmp_path):
    rng = np.random.default_rng(0)
    deca = {
        "static_lmk_faces_idx": rng.integers(0, 100, 51),
        "static_lmk_bary_coords": np.full((51, 3), 1 / 3),
        "dynamic_lmk_faces_idx": rng.integers(0, 100, (79, 17)),
        "dynamic_lmk_bary_coords": np.full((79, 17, 3), 1 / 3),
        "full_lmk_faces_idx": rng.integers(0, 100, (1, 68)),
        "full_lmk_bary_coords": np.full((1, 68, 3), 1 / 3),
    }
    npy = tmp_path / "landmark_embedding.npy"
    np.save(npy, deca, allow_pickle=True)
    embeddings = load_landmark_embeddings(npy)
    assert {k: v.face_idx.shape for k, v in embeddings.items()} == {
        "static": (51,), "dynamic": (79, 17), "full": (68,)
    }  # fmt: skip
    assert embeddings["static"].face_idx.tolist() == deca["static_lmk_faces_idx"].tolist()

    npz = tmp_path / "mediapipe_landmark_embedding.npz"
    np.savez(npz, lmk_face_idx=np.arange(105), lmk_b_coords=np.full((105, 3), 1 / 3), landmark_indices=np.arange(105) * 2)
    mediapipe = load_landmark_embeddings(npz)["mediapipe"]
    assert mediapipe.n_landmarks == 105 and mediapipe.landmark_indices[-1] == 208

    # Contour row = yaw in degrees (0..39), negative yaw -> 39 - yaw (DecaFLAME).
    yaw = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.17453, 0.0], [0.0, -0.17453, 0.0], [0.0, -1.2, 0.0]])
    chosen = select_dynamic_contour(embeddings["dynamic"], batch_rodrigues(yaw))
    rows = [0, 10, 49, 78]
    assert chosen.face_idx.tolist() == deca["dynamic_lmk_faces_idx"][rows].tolist()
