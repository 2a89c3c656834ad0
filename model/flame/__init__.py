"""FLAME 2020 head model: safe file readers, a synthetic stand-in, and the differentiable layer."""

from model.flame.landmarks import (
    LandmarkEmbedding,
    landmarks_from_vertices,
    load_landmark_embeddings,
    select_dynamic_contour,
)
from model.flame.layer import FlameConfig, FlameLayer, FlameOutput, flame_params_from_label
from model.flame.pickle_writer import write_flame_pickle
from model.flame.rotation import batch_rodrigues
from model.flame.safe_pickle import FlameFileError, UnsafePickleError, load_flame_pickle, load_pickled_npy
from model.flame.synthetic import synthetic_flame_arrays

__all__ = [
    "FlameConfig",
    "FlameFileError",
    "FlameLayer",
    "FlameOutput",
    "LandmarkEmbedding",
    "UnsafePickleError",
    "batch_rodrigues",
    "flame_params_from_label",
    "landmarks_from_vertices",
    "load_flame_pickle",
    "load_landmark_embeddings",
    "load_pickled_npy",
    "select_dynamic_contour",
    "synthetic_flame_arrays",
    "write_flame_pickle",
]
