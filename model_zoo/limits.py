"""Bounds on numbers that come from users and files, declared once for every place that checks them.

A value outside them is refused before anything is allocated or trained: it is either meaningless
(an Linf radius beyond 1 on images in [0, 1]) or a resource request no run here can serve.
"""

from __future__ import annotations

# An Linf radius (or attack step) on images in [0, 1] beyond 1 allows every image: no run means it.
MAX_EPS = 1.0
# numpy's RandomState (data order, splits) takes seeds in [0, 2**32).
SEED_RANGE = (0, 2**32 - 1)
# AdamW learning rates above this diverge on every model here within a step.
MAX_LR = 1.0
# A model config integer (layers, widths, states) beyond this is a typo: no model here is near it,
# and building one would exhaust memory before any check could run.
MAX_CONFIG_INT = 1 << 16
# A config dimension (d_state, a mixer's hidden size) squared may exceed the file's stored element
# count by at most this factor: the mixers' initializations cost O(dim^2) memory (HiPPO matrices).
DIM_SQUARED_PER_ELEMENT = 16
# Downloads: a zoo checkpoint larger than this is not one of ours; a stalled server is given up.
MAX_DOWNLOAD_BYTES = 2 << 30
DOWNLOAD_TIMEOUT_S = 600.0
