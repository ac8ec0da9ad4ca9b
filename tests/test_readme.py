"""Every ```python block of the README runs, and the set-up commands are the ones CI runs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_python_blocks_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {"__name__": "__readme__"})


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```bash\n(.*?)\n```", README, flags=re.S)
    assert len(commands) == 2, "the README holds exactly two set-up commands"
    assert "keras-gss train" in commands[0]
    assert commands[1] in (ROOT / ".ci" / "run").read_text()


def test_code_is_ruff_clean():
    import subprocess

    result = subprocess.run(["ruff", "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_api_table_names_every_public_name():
    import keras_gss

    api = README[README.index("## API") : README.index("## The main job")]
    missing = [n for n in keras_gss.__all__ if not re.search(rf"`{n}[`(.]", api)]
    assert not missing, f"README's API table does not name {missing}"


def test_docs_python_blocks_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    found = 0
    for page in sorted((ROOT / "docs").glob("*.md")):
        for block in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S):
            exec(compile(block, str(page), "exec"), {"__name__": "__docs__"})
            found += 1
    assert found


def test_the_experiment_is_not_imported_with_the_library():
    import subprocess
    import sys

    code = ("import sys, keras_gss as gss; lazy = ('experiment', 'datasets', 'models'); "
            "print([m for m in lazy if 'keras_gss.' + m in sys.modules]); "
            "print(gss.models.lenet().name)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.split("\n")[:2] == ["[]", "lenet"], out.stderr[-2000:]
