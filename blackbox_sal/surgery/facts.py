"""What probe runs of a forward graph saw, as the reverse pass reads it (pure data).

:func:`blackbox_sal.model.probe.probe` fills it: per tensor one shape per probe (different
batch sizes and lengths, so which axes are static shows), its dtype, the value of tensors
computed from constants alone, and small integer tensors per probe (shape arithmetic).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

_FLOATS = (np.float16, np.float32, np.float64)


@dataclass(frozen=True)
class Facts:
    """What the probe runs saw: per tensor one shape per probe, its dtype, the value of
    tensors computed from constants alone, and small integer tensors per probe."""

    shapes: Mapping[str, tuple[tuple[int, ...], ...]]
    dtypes: Mapping[str, np.dtype]
    values: Mapping[str, np.ndarray]
    #: small integer tensors as each probe saw them (shape arithmetic, slice bounds)
    small_ints: Mapping[str, tuple[np.ndarray, ...]] = field(default_factory=dict)

    def known(self, name: str) -> np.ndarray | None:
        """The tensor's value when it cannot change with the input: computed from constants,
        or a small integer tensor every probe (different batch and length) saw the same."""
        if name in self.values:
            return self.values[name]
        seen = self.small_ints.get(name)
        if seen and all(v.shape == seen[0].shape and (v == seen[0]).all() for v in seen[1:]):
            return seen[0]
        return None

    def rank(self, name: str) -> int:
        return len(self.shapes[name][0])

    def dim(self, name: str, axis: int) -> int | None:
        """The axis' extent when it is the same in every probe, else None (dynamic)."""
        sizes = {s[axis] for s in self.shapes[name]}
        return sizes.pop() if len(sizes) == 1 else None

    def is_float(self, name: str) -> bool:
        return name in self.dtypes and self.dtypes[name].type in _FLOATS
