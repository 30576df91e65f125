"""Every JSON file is formatted as MONAI model-zoo's pre-commit formats it (4-space pretty JSON, final newline)."""
import subprocess
from pathlib import Path

from pre_commit_hooks import pretty_format_json

ROOT = Path(__file__).resolve().parents[1]
JSON_FILES = subprocess.run(["git", "ls-files", "*.json"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.split()
HOOK_ARGS = ["--indent=4", "--no-sort-keys"]  # as in .pre-commit-config.yaml, without --autofix: report only


def test_json_files_pass_modelzoo_formatting():
    assert sum(f.startswith("bundles/") for f in JSON_FILES) >= 30
    assert pretty_format_json.main(HOOK_ARGS + [str(ROOT / f) for f in JSON_FILES]) == 0, \
        "run: pretty-format-json --autofix --indent=4 --no-sort-keys <file>"
    no_newline = [f for f in JSON_FILES if not (ROOT / f).read_bytes().endswith(b"\n")]
    assert not no_newline, f"missing final newline: {no_newline}"


def test_the_check_catches_a_two_space_file(tmp_path):
    f = tmp_path / "x.json"
    f.write_text('{\n  "a": 1\n}\n')
    assert pretty_format_json.main(HOOK_ARGS + [str(f)]) == 1
