"""The shared experiment runner: dispatch, machine description, results.md sections kept apart."""
import json

from tools.experiments import report
from tools.experiments.__main__ import main


def test_unknown_paper_is_a_usage_error(capsys):
    assert main(["spleen"]) == 2
    assert "aortadiff" in capsys.readouterr().err


def test_a_paper_without_experiment_says_so(capsys, monkeypatch):
    import tools.experiments.__main__ as runner
    monkeypatch.setattr(runner, "PAPERS", (*runner.PAPERS, "figures"))  # a package of ours without experiment.py
    assert main(["figures"]) == 2
    assert "no experiment for 'figures'" in capsys.readouterr().err


def test_sections_are_replaced_in_place_and_kept_apart(tmp_path):
    md = tmp_path / "results.md"
    report.write_section("aortadiff", "A1", md)
    report.write_section("abdomen", "B1", md)
    report.write_section("aortadiff", "A2\n\nmore", md)
    text = md.read_text()
    assert "A1" not in text and "A2\n\nmore" in text and "B1" in text
    assert text.index("begin aortadiff") < text.index("begin abdomen")  # order kept on rewrite
    assert text.endswith("\n") and text.count("<!-- begin") == 2


def test_machine_info_and_json(tmp_path):
    info = report.machine_info()
    assert info["cores"] >= 1 and info["torch"]
    assert info["cpu"] and info["cpu_capability"] in {"DEFAULT", "AVX2", "AVX512", "NEON", "SVE128", "SVE256", "VSX",
                                                      "ZVECTOR"}
    path = report.write_json(tmp_path / "r" / "x.json", {"machine": info})
    assert json.loads(path.read_text())["machine"]["cores"] == info["cores"]


def test_results_paths_are_written_relative_to_the_repository(tmp_path):
    from tools.experiments.report import repo_relative

    root = tmp_path / "checkout"
    payload = {"work": str(root / "runs" / "x"), "runs": [{"ckpt": str(root / "m.pt"), "n": 3}],
               "other": "/elsewhere/file.nii.gz", "pair": (str(root / "a"), 1.5)}
    assert repo_relative(payload, root) == {"work": "runs/x", "runs": [{"ckpt": "m.pt", "n": 3}],
                                            "other": "/elsewhere/file.nii.gz", "pair": ["a", 1.5]}
