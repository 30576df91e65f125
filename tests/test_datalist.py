"""Datalist loading: relative paths resolved against the datalist folder, ids untouched, clear errors."""

from __future__ import annotations

import json

import pytest

from tools.data.datalist import load_datalist


def _layout(tmp_path):
    (tmp_path / "aaa_000").mkdir()
    (tmp_path / "aaa_000" / "ncct.nii.gz").write_bytes(b"x")
    entry = {"case_id": "aaa_000", "ncct": "aaa_000/ncct.nii.gz"}
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"training": [entry], "validation": []}))
    return path


def test_relative_paths_resolve_and_ids_stay(tmp_path):
    dl = _layout(tmp_path)
    (entry,) = load_datalist(dl, "training", required_keys=("ncct",))
    assert entry["ncct"] == str(tmp_path / "aaa_000" / "ncct.nii.gz")
    assert entry["case_id"] == "aaa_000"  # an id that names an existing folder is not a path
    assert load_datalist(dl, "validation") == []


def test_errors_name_file_split_and_key(tmp_path):
    dl = _layout(tmp_path)
    with pytest.raises(ValueError, match="no split 'test'"):
        load_datalist(dl, "test")
    with pytest.raises(ValueError, match=r"missing key\(s\) \['lumen'\]"):
        load_datalist(dl, "training", required_keys=("lumen",))
    (tmp_path / "aaa_000" / "ncct.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="key 'ncct'.*ncct.nii.gz"):
        load_datalist(dl, "training")
    with pytest.raises(FileNotFoundError, match="nothere.json"):
        load_datalist(tmp_path / "nothere.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json.*not valid JSON"):
        load_datalist(tmp_path / "bad.json")
