"""Label-id tables of the public data sets and the remapping to the project's conventions.

Project conventions
-------------------
* Abdomen (AMOS22 ids, :data:`AMOS_LABELS`): 1 spleen, 2 right kidney, 3 left kidney, 4 gall bladder,
  5 esophagus, 6 liver, 7 stomach, 8 aorta, 9 postcava (IVC), 10 pancreas, 11 right adrenal gland,
  12 left adrenal gland, 13 duodenum, 14 bladder, 15 prostate/uterus.
* Heart (:data:`HEART_LABELS`): 1 LA, 2 LV, 3 RA, 4 RV, 5 MYO, 6 AO, 7 PA, 8 LAA.

Source tables
-------------
* :data:`TOTALSEG_V2_TO_AMOS`: TotalSegmentator v2 ``total`` task ids -> AMOS22 ids. Every other
  TotalSegmentator id (lungs, bones, muscles, bowel, portal vein, ...) becomes 0 (background).
  TotalSegmentator has no uterus class: AMOS id 15 comes from ``prostate`` only.
* :data:`MMWHS_TO_HEART`: MM-WHS 2017 CT label values -> heart ids (MM-WHS has no LAA).
* :data:`TOTALSEG_HEART_FILES`: TotalSegmentator structure names (the ``<name>.nii.gz`` files it writes
  per structure; ``heartchambers_highres`` task plus ``atrial_appendage_left`` of ``total``) -> heart ids.
  ``pulmonary_vein`` (``total`` id 53) is NOT the pulmonary artery and is not mapped.
* :data:`TOTALSEG_HEARTCHAMBERS_TO_HEART`: the ``heartchambers_highres`` multi-label ids -> heart ids.
"""

from __future__ import annotations

import sys
from collections.abc import Hashable, Mapping
from functools import cache
from typing import Any

import numpy as np

__all__ = [
    "AMOS_LABELS",
    "HEART_LABELS",
    "HEART_NAMES",
    "MAPPINGS",
    "MMWHS_TO_HEART",
    "PER_STRUCTURE_FILES",
    "TOTALSEG_HEARTCHAMBERS_TO_HEART",
    "TOTALSEG_HEART_FILES",
    "TOTALSEG_V2_TO_AMOS",
    "RemapLabels",  # noqa: F822 (built on first access, see __getattr__)
    "RemapLabelsd",  # noqa: F822
    "named_mapping",
    "remap_labels",
]

AMOS_LABELS: dict[int, str] = {
    0: "background",
    1: "spleen",
    2: "right kidney",
    3: "left kidney",
    4: "gall bladder",
    5: "esophagus",
    6: "liver",
    7: "stomach",
    8: "aorta",
    9: "postcava",
    10: "pancreas",
    11: "right adrenal gland",
    12: "left adrenal gland",
    13: "duodenum",
    14: "bladder",
    15: "prostate/uterus",
}

# TotalSegmentator v2 `total` id (name) -> AMOS22 id; all other TotalSegmentator ids -> 0.
TOTALSEG_V2_TO_AMOS: dict[int, int] = {
    1: 1,  # spleen -> spleen
    2: 2,  # kidney_right -> right kidney
    3: 3,  # kidney_left -> left kidney
    4: 4,  # gallbladder -> gall bladder
    15: 5,  # esophagus -> esophagus
    5: 6,  # liver -> liver
    6: 7,  # stomach -> stomach
    52: 8,  # aorta -> aorta
    63: 9,  # inferior_vena_cava -> postcava
    7: 10,  # pancreas -> pancreas
    8: 11,  # adrenal_gland_right -> right adrenal gland
    9: 12,  # adrenal_gland_left -> left adrenal gland
    19: 13,  # duodenum -> duodenum
    21: 14,  # urinary_bladder -> bladder
    22: 15,  # prostate -> prostate/uterus
}

HEART_LABELS: dict[int, str] = {
    0: "background",
    1: "LA",
    2: "LV",
    3: "RA",
    4: "RV",
    5: "MYO",
    6: "AO",
    7: "PA",
    8: "LAA",
}
HEART_NAMES: dict[str, int] = {name: i for i, name in HEART_LABELS.items() if i}

# MM-WHS 2017 CT label value -> heart id (no LAA in MM-WHS).
MMWHS_TO_HEART: dict[int, int] = {
    420: 1,  # left atrium blood cavity -> LA
    500: 2,  # left ventricle blood cavity -> LV
    550: 3,  # right atrium blood cavity -> RA
    600: 4,  # right ventricle blood cavity -> RV
    205: 5,  # myocardium of the left ventricle -> MYO
    820: 6,  # ascending aorta -> AO
    850: 7,  # pulmonary artery -> PA
}

# Per-structure layout default: heart name -> mask file name (one binary mask per structure).
PER_STRUCTURE_FILES: dict[str, str] = {name: f"{name}.nii.gz" for name in HEART_NAMES}

# TotalSegmentator structure file names -> heart names.
TOTALSEG_HEART_FILES: dict[str, str] = {
    "LA": "heart_atrium_left.nii.gz",
    "LV": "heart_ventricle_left.nii.gz",
    "RA": "heart_atrium_right.nii.gz",
    "RV": "heart_ventricle_right.nii.gz",
    "MYO": "heart_myocardium.nii.gz",
    "AO": "aorta.nii.gz",
    "PA": "pulmonary_artery.nii.gz",
    "LAA": "atrial_appendage_left.nii.gz",
}

# TotalSegmentator `heartchambers_highres` multi-label id -> heart id.
TOTALSEG_HEARTCHAMBERS_TO_HEART: dict[int, int] = {1: 5, 2: 1, 3: 2, 4: 3, 5: 4, 6: 6, 7: 7}


MAPPINGS = ("TOTALSEG_V2_TO_AMOS", "MMWHS_TO_HEART", "TOTALSEG_HEARTCHAMBERS_TO_HEART")


def named_mapping(mapping: Mapping[int, int] | str) -> Mapping[int, int]:
    """``mapping`` itself, or the table of this module it names (e.g. ``"TOTALSEG_V2_TO_AMOS"``), so that a
    bundle config can write ``"mapping": "TOTALSEG_V2_TO_AMOS"``."""
    if isinstance(mapping, str):
        if mapping.upper() not in MAPPINGS:
            raise ValueError(f"unknown label mapping {mapping!r}; expected a dict or one of {MAPPINGS}")
        return globals()[mapping.upper()]
    if not isinstance(mapping, Mapping):
        raise ValueError(
            f"label mapping must be a dict of source id -> target id or a table name, got {type(mapping).__name__}"
        )
    return mapping


def remap_labels(labels: Any, mapping: Mapping[int, int], default: int = 0) -> Any:
    """Map every class id of ``labels`` through ``mapping``; ids absent from ``mapping`` become ``default``.

    Args:
        labels: integer label map (numpy array, torch tensor or MetaTensor), any shape.
        mapping: source id -> target id (JSON-style string keys allowed), or the name of a table of this
            module (:data:`MAPPINGS`).
        default: target id of the source ids not in ``mapping`` (background by default).

    Returns:
        The remapped map, same type, shape and (for MetaTensor) metadata as ``labels``.

    Raises:
        ValueError: ``labels`` holds negative or non-integer values.
    """
    is_tensor = "torch" in sys.modules and isinstance(labels, sys.modules["torch"].Tensor)
    arr = labels.detach().cpu().numpy() if is_tensor else np.asarray(labels)
    if arr.size == 0:
        return labels
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.array_equal(np.rint(arr), arr):
            raise ValueError("remap_labels: the label map holds non-integer values; expected class ids")
        arr = np.rint(arr).astype(np.int64)
    if arr.min() < 0:
        raise ValueError(f"remap_labels: negative label value {arr.min()}; expected class ids >= 0")
    mapping = {int(k): int(v) for k, v in named_mapping(mapping).items()}
    size = int(max(arr.max(), max(mapping, default=0))) + 1
    lut = np.full(size, default, dtype=np.int64)
    for src, dst in mapping.items():
        lut[int(src)] = int(dst)
    out = lut[arr]
    if is_tensor:
        from monai.utils import convert_to_dst_type

        return convert_to_dst_type(out, labels, dtype=labels.dtype)[0]
    return out.astype(np.asarray(labels).dtype if np.issubdtype(np.asarray(labels).dtype, np.integer) else np.int64)


# The MONAI transforms are built on first access (PEP 562 module ``__getattr__``) so that the preparation
# CLIs, which only need the tables and ``remap_labels``, start without importing torch and MONAI.
# ``from tools.data.label_maps import RemapLabelsd`` and ``"_target_": "tools.data.label_maps.RemapLabelsd"``
# work as usual.
@cache
def _transforms() -> dict[str, type]:
    from monai.config import KeysCollection
    from monai.transforms import MapTransform, Transform

    class RemapLabels(Transform):
        """Array transform: :func:`remap_labels` with a fixed ``mapping`` (e.g. ``TOTALSEG_V2_TO_AMOS``)."""

        def __init__(self, mapping: Mapping[int, int] | str, default: int = 0) -> None:
            self.mapping = {int(k): int(v) for k, v in named_mapping(mapping).items()}
            self.default = int(default)

        def __call__(self, labels: Any) -> Any:
            return remap_labels(labels, self.mapping, self.default)

    class RemapLabelsd(MapTransform):
        """Dictionary version of ``RemapLabels``: remaps the label maps under ``keys`` (any shape, any
        array type; MetaTensor metadata kept)."""

        def __init__(
            self, keys: KeysCollection, mapping: Mapping[int, int], default: int = 0, allow_missing_keys: bool = False
        ) -> None:
            super().__init__(keys, allow_missing_keys)
            self.remap = RemapLabels(mapping, default)

        def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
            d = dict(data)
            for key in self.key_iterator(d):
                d[key] = self.remap(d[key])
            return d

    for cls in (RemapLabels, RemapLabelsd):
        cls.__module__ = __name__
        cls.__qualname__ = cls.__name__
    return {"RemapLabels": RemapLabels, "RemapLabelsd": RemapLabelsd}


def __getattr__(name: str) -> Any:
    if name in ("RemapLabels", "RemapLabelsd"):
        return _transforms()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
