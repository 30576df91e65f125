"""MONAI Label glue: give a bundle the extra per-study input it needs beside the image, and name the extra
files its writer makes in the result.

MONAI Label's ``/infer/<model>?image=<id>`` hands a bundle only ``data["image"]`` (the study's path).
AortaDiff also needs the study's aorta mask. `StudyMaskd` puts that mask's path under a key (e.g.
``aorta``) before the bundle's own ``LoadImaged`` runs:

1. a label file uploaded with the request (``/infer`` form field ``label`` -> ``data["label"]``), else
2. the datastore's label of that study with tag ``tag``: ``<studies>/labels/<tag>/<image file name>``
   (MONAI Label's local datastore layout for tagged labels), else
3. with ``required=False`` nothing: the bundle finds the mask itself (AortaDiff: its aorta segmenter runs on
   the NCCT, so the user needs no label at all).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

from monai.transforms import Transform


class StudyMaskd(Transform):
    """Set ``data[key]`` to the path of the study's mask (uploaded label, else ``labels/<tag>/<name>``).

    Args:
        key: key the bundle's preprocessing loads the mask from (e.g. ``"aorta"``).
        image_key: key holding the study path (MONAI Label: ``"image"``; ``"image_path"`` is also read).
        tag: datastore label tag folder under ``<studies>/labels/``.
        request_key: key of an uploaded label file in the request.
        required: without a mask, raise (True) or leave ``key`` unset (False).
        load: put the loaded mask (MONAI's ``LoadImage``) under ``key`` instead of its path. MONAI Label replaces
            a bundle's ``LoadImaged`` by its own loader, which needs every key present; with ``load`` the bundle's
            ``LoadImaged`` reads the image only (see models.yml), and a missing optional mask stays missing.

    Raises:
        FileNotFoundError: ``required`` and no uploaded label and no ``labels/<tag>/<image name>`` next to the study.
    """

    def __init__(self, key: str = "aorta", image_key: str = "image", tag: str = "aorta",
                 request_key: str = "label", required: bool = True, load: bool = False) -> None:
        self.key, self.image_key, self.tag, self.request_key = key, image_key, tag, request_key
        self.required, self.load = bool(required), bool(load)

    def _set(self, d: dict, path: str) -> dict:
        if self.load:
            from monai.transforms import LoadImage

            d[self.key] = LoadImage(image_only=True)(path)
        else:
            d[self.key] = path
        return d

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        if isinstance(d.get(self.key), str) and d[self.key]:
            return self._set(d, d[self.key])
        uploaded = d.get(self.request_key)
        if isinstance(uploaded, str) and uploaded and Path(uploaded).is_file():
            return self._set(d, uploaded)
        image = d.get("image_path") if isinstance(d.get("image_path"), str) else d.get(self.image_key)
        if not isinstance(image, str):
            raise ValueError(f"StudyMaskd: data[{self.image_key!r}] must be the study's file path, got {type(image)}")
        candidate = Path(image).parent / "labels" / self.tag / Path(image).name
        if not candidate.is_file():
            if not self.required:
                return d
            raise FileNotFoundError(
                f"no {self.tag} mask for study {image}: upload it as the 'label' file of the /infer request or put it "
                f"at {candidate}"
            )
        return self._set(d, str(candidate))


class ResultFilesd(Transform):
    """Name files a bundle's own writer made in the MONAI Label result (``/infer`` response ``params``).

    MONAI Label returns one volume per request (``pred``, the label map); the bundle's writer may write more
    (AortaDiff: the synthetic CECT). ``d["result"][name]`` becomes the path of ``<d[folder_key]>/<file>``.

    Raises:
        FileNotFoundError: the writer did not write a listed file (names it).
    """

    def __init__(self, files: Mapping[str, str], folder_key: str = "output_folder") -> None:
        self.files, self.folder_key = dict(files), folder_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        folder = d.get(self.folder_key)
        if not isinstance(folder, str):
            raise ValueError(f"ResultFilesd: data[{self.folder_key!r}] (the writer's output folder) is missing")
        result = dict(d.get("result") or {})
        for name, file in self.files.items():
            path = Path(folder) / file
            if not path.is_file():
                raise FileNotFoundError(f"ResultFilesd: the bundle's writer did not write {path}")
            result[name] = str(path)
        d["result"] = result
        return d
