"""The one overwrite guard (tools.engines.output_guard) and the one checkpoint reader (tools.engines.checkpoint_io)."""

from __future__ import annotations

import pytest
import torch

from tools.engines.checkpoint_io import load_checkpoint, load_network
from tools.engines.output_guard import refuse_overwrite


def test_refuse_overwrite_names_the_files_and_how_to_replace_them(tmp_path):
    files = [tmp_path / f"f{i}.json" for i in range(7)]
    refuse_overwrite(files + [None])  # nothing exists yet
    files[2].write_text("{}")
    with pytest.raises(FileExistsError, match=r"output '.*f2\.json' already exists; pass --overwrite True"):
        refuse_overwrite(files)
    for f in files:
        f.write_text("{}")
    with pytest.raises(FileExistsError, match=r"outputs '.*f0\.json', .* and 2 more already exist; pass --overwrite True"):
        refuse_overwrite(files)
    refuse_overwrite(files, overwrite=True)


def test_refuse_overwrite_never_writes_onto_an_input(tmp_path):
    src = tmp_path / "in" / "case.nii.gz"
    src.parent.mkdir()
    src.write_bytes(b"")
    same = tmp_path / "in" / ".." / "in" / "case.nii.gz"  # the same file by another spelling
    with pytest.raises(ValueError, match="is an input file"):
        refuse_overwrite([tmp_path / "out.json", same], overwrite=True, inputs=[src])
    refuse_overwrite([tmp_path / "in" / "other.nii.gz"], inputs=[src])


def test_load_checkpoint_errors_name_the_file_and_the_keys(tmp_path):
    net = torch.nn.Linear(2, 3)
    with pytest.raises(FileNotFoundError, match=r"missing\.pt' does not exist \(train the LDM stage first\)"):
        load_checkpoint(tmp_path / "missing.pt", "model", hint="train the LDM stage first")
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": net.state_dict(), "optimizer": {"state": {}}}, ckpt)
    assert set(load_checkpoint(ckpt)) == {"model", "optimizer"}  # key=None: the whole file
    assert set(load_checkpoint(ckpt, "model")) == {"weight", "bias"}
    with pytest.raises(ValueError, match=r"ckpt\.pt' has no 'scale_factor' entry \(found \['model', 'optimizer'\]\)"):
        load_checkpoint(ckpt, "scale_factor")
    plain = tmp_path / "plain.pt"  # model-zoo models/model.pt: the state dict itself
    torch.save(net.state_dict(), plain)
    with pytest.raises(ValueError, match="has no 'model' entry"):
        load_checkpoint(plain, "model")
    assert torch.equal(load_checkpoint(plain, "model", accept_state_dict=True)["weight"], net.weight)
    listed = tmp_path / "pairs.pt"
    torch.save([{"image": torch.zeros(1)}], listed)
    assert len(load_checkpoint(listed)) == 1
    with pytest.raises(ValueError, match="holds a list"):
        load_checkpoint(listed, "model")


def test_load_network_loads_the_model_entry_in_eval_mode(tmp_path):
    torch.manual_seed(0)
    src, dst = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout()), torch.nn.Sequential(
        torch.nn.Linear(2, 2), torch.nn.Dropout())
    torch.save({"model": src.state_dict()}, tmp_path / "model.pt")
    out = load_network(dst, tmp_path / "model.pt")
    assert out is dst and not out.training
    torch.testing.assert_close(out[0].weight, src[0].weight)


def test_load_network_accepts_a_plain_state_dict_and_refuses_another_network(tmp_path):
    torch.manual_seed(0)
    src, dst = torch.nn.Linear(2, 3), torch.nn.Linear(2, 3)
    torch.save(src.state_dict(), tmp_path / "model.pt")  # model-zoo's models/model.pt
    torch.testing.assert_close(load_network(dst, tmp_path / "model.pt").weight, src.weight)
    torch.save({"model": torch.nn.Conv2d(1, 1, 3).state_dict()}, tmp_path / "conv.pt")  # same names, other shapes
    with pytest.raises(ValueError, match=r"conv\.pt' matches 0 of 2 variables of Linear: it belongs to another"):
        load_network(torch.nn.Linear(2, 3), tmp_path / "conv.pt")
    torch.save({"other.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other\.pt' matches 0 of 2 variables"):
        load_network(torch.nn.Linear(2, 3), tmp_path / "other.pt")
    torch.save({"weight": src.weight.detach()}, tmp_path / "half.pt")  # a key missing
    with pytest.raises(ValueError, match=r"half\.pt' matches 1 of 2 variables of Linear: missing 1 \(e\.g\. \['bias'\]\)"):
        load_network(torch.nn.Linear(2, 3), tmp_path / "half.pt")

