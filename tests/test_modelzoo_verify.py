"""model-zoo's own CI check, ``ci/verify_bundle.py -m full``, on a copy of every bundle, offline
(``tools/modelzoo_verify.py``; the CI scripts and the schema are in ``../shared``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools import modelzoo_verify as mv

pytestmark = pytest.mark.skipif(not (mv.DEFAULT_CI / "verify_bundle.py").is_file() or not mv.DEFAULT_SCHEMA.is_file(),
                                reason=f"model-zoo CI scripts / schema not found at {mv.DEFAULT_CI}, {mv.DEFAULT_SCHEMA}")


def test_exemptions_are_only_those_model_zoo_grants_its_diffusion_bundle(monkeypatch):
    granted = mv.granted_exemptions()
    assert {"exclude_verify_shape_list", "exclude_verify_torchscript_list"} <= granted
    mv.check_exemptions()
    for bundle, lists in mv.EXEMPTIONS.items():  # each one named in the model card
        card = (mv.BUNDLES_DIR / bundle / "docs" / "README.md").read_text()
        assert all(name in card for name in lists), f"{bundle}: docs/README.md must name {sorted(lists)}"
    monkeypatch.setitem(mv.EXEMPTIONS, "cardiac_ldm_ssl", {"exclude_download_large_file_list": "too large"})
    with pytest.raises(ValueError, match="not granted to brats_mri_generative_diffusion"):
        mv.check_exemptions()


def test_verify_bundle_full_mode_on_every_bundle(tmp_path):
    out = mv.verify(work=str(tmp_path))
    assert set(out) == set(mv.EXEMPTIONS) == {p.parent.parent.name for p in mv.BUNDLES_DIR.glob("*/configs/metadata.json")}
    for bundle, text in out.items():
        assert "version and changelog are verified correctly." in text
        assert "metadata format is verified correctly." in text
        assert "properties are verified correctly." in text
        shape_exempt = "exclude_verify_shape_list" in mv.EXEMPTIONS[bundle]
        assert ("data shape is verified correctly." in text) != shape_exempt, text[-2000:]
        ts_exempt = "exclude_verify_torchscript_list" in mv.EXEMPTIONS[bundle]
        assert ("export weights into TorchScript module successfully." in text) != ts_exempt, text[-2000:]
    assert (tmp_path / "models" / "cardiac_ldm_ssl" / "models" / "verify_model.ts").is_file()
    assert not (tmp_path / "models" / "aortadiff_cect" / "large_files.yml").exists()
    assert (tmp_path / "models" / "aortadiff_cect" / "eval" / "schema.json").read_bytes() == Path(
        mv.DEFAULT_SCHEMA).read_bytes()
