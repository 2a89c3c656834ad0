"""Facts of MediaPipe's face mesh, the landmark layout fit_flame, animate, evaluate and the asset checks read.

The mesh model (``refine_landmarks=True``) returns 468 face points followed by 10 iris points. The iBUG-68
correspondence lets 68-point consumers (the official 5-point crop, the PD-FGC motion crop, ``face_align``)
read a MediaPipe mesh.
"""

from __future__ import annotations

import numpy as np

N_MESH_POINTS = 478  # 468 face-mesh points + 10 iris points (refine_landmarks)

# MediaPipe mesh index of each of the 68 iBUG points (jaw 0-16, brows 17-26, nose 27-35,
# eyes 36-47, outer lips 48-59, inner lips 60-67): the correspondence commonly used to feed
# 68-point consumers (the official 5-point crop and PD-FGC motion crop) from a MediaPipe mesh.
MESH_TO_IBUG68 = np.array(
    [
        162, 234, 93, 58, 172, 136, 149, 148, 152, 377, 378, 365, 397, 288, 323, 454, 389,
        71, 63, 105, 66, 107, 336, 296, 334, 293, 301,
        168, 197, 5, 4, 75, 97, 2, 326, 305,
        33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,
        61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,
        78, 82, 13, 312, 308, 317, 14, 87,
    ]
)  # fmt: skip
