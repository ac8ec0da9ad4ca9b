"""The committed benchmark results are declared experiments: every file names the
code version that produced it, no scripts or unpacked caches live under results."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def benchmark(name: str):
    """`benchmarks/<name>.py` imported (the scripts import each other by bare names)."""
    import importlib
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def tracked_results() -> list[str]:
    out = subprocess.run(["git", "ls-files", "benchmarks/results"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return [line for line in out.splitlines() if line]


def test_every_result_file_names_its_commit():
    table = (ROOT / "benchmarks" / "results" / "PROVENANCE.md").read_text()
    listed = dict(re.findall(r"^\| (\S+) \| ([0-9a-f]{7,10}) \|", table, flags=re.M))
    files = [f.removeprefix("benchmarks/results/") for f in tracked_results()]
    missing = [f for f in files if f != "PROVENANCE.md" and f not in listed]
    assert files and not missing, f"run `python benchmarks/provenance.py`; missing: {missing}"


def test_no_scripts_or_unpacked_caches_under_results():
    files = tracked_results()
    assert not [f for f in files if f.endswith((".py", ".sh", ".ipynb"))]
    assert not [f for f in files if "/cache/" in f]  # packed: one cache.json.gz per experiment


def test_readme_results_at_a_glance_are_the_committed_table():
    table = (ROOT / "benchmarks" / "results" / "at_a_glance" / "table.md").read_text()
    body = table.split("\n", 2)[2].strip()  # after the command line
    readme = (ROOT / "README.md").read_text()
    assert body in readme, "rerun `python benchmarks/at_a_glance.py` and paste its table"
    assert "benchmarks/results/at_a_glance/at_a_glance.png" in readme


def test_every_benchmark_imports_and_records_where_it_ran():
    import sys

    _meta = benchmark("_meta")
    info = _meta.meta("residual_nets.py", ["--quick"], data="mnist")
    assert info["command"] == "python benchmarks/residual_nets.py --quick"
    assert re.fullmatch(r"[0-9a-f]{40}", info["commit"]) and info["data"] == "mnist"
    assert info["commit"][:10] in _meta.header(info) and info["keras"] in _meta.header(info)
    scripts = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if p.stem != "_meta")
    probes = sorted(p.stem for p in (ROOT / "benchmarks" / "probes").glob("probe_*.py")
                    if "def main(" in p.read_text())  # the others are one-off scripts  # fmt: skip
    code = "import sys; sys.path[:0] = ['benchmarks', 'benchmarks/probes']; " + "; ".join(
        f"import {name}" for name in scripts + probes
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(scripts) >= 8 and len(probes) >= 3


def test_a_probe_writes_its_rows_and_table_with_the_command(tmp_path):
    import argparse
    import json

    _meta = benchmark("_meta")
    args = argparse.Namespace(nets=["lenet"], out=str(tmp_path / "x"))
    rows = [{"net": "lenet", "error": 0.25}]
    _meta.write(args.out, "probes/p.py", ["--nets", "lenet"], args, rows, "| a |")
    saved = json.loads((tmp_path / "x" / "results.json").read_text())
    assert saved["rows"] == rows and saved["meta"]["args"] == vars(args)
    table = (tmp_path / "x" / "table.md").read_text()
    assert table.startswith("Command: `python benchmarks/probes/p.py --nets lenet` at ")
    assert table.endswith("\n\n| a |\n")
    _meta.write(args.out, "probes/p.py", [], args, rows, "t", stem=("run1", "run1"))
    assert (tmp_path / "x" / "run1.json").exists() and (tmp_path / "x" / "run1.md").exists()


def test_every_file_the_docs_cite_is_in_git():
    """Links and `benchmarks/...`/`results/...` paths in the README, docs/ and
    benchmarks/README.md name files git tracks (not ignored, not missing)."""
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()  # fmt: skip
    tracked = set(out) | {str(Path(f).parent) for f in out}
    pages = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *(ROOT / "docs").glob("*.md")]
    missing = []
    for page in pages:
        text = page.read_text()
        cited = re.findall(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)", text)  # markdown links, not URLs
        cited += re.findall(r"`((?:benchmarks/)?results/[\w./-]+\.\w+)`", text)
        for target in cited:
            base = page.parent if not target.startswith("benchmarks/") else ROOT
            path = (base / target).resolve()
            if path.is_relative_to(ROOT) and str(path.relative_to(ROOT)) not in tracked:
                missing.append(f"{page.relative_to(ROOT)}: {target}")
    assert not missing, missing


def test_latency_budget_combines_seeds_run_apart(tmp_path):
    import json

    def run(seed, acc, latency_ms):
        rows = [
            {
                "net": "lenet",
                "seed": seed,
                "batch": 32,
                "budget": 0.5,
                "method": m,
                "accuracy": acc,
                "dense_accuracy": 0.9,
                "dense_ms": 2.0,
                "ms": ms,
                "budget_ms": 1.0,
                "predicted_ms": 1.0,
                "predicted_ratio": 0.5,
                "flop_ratio": 0.4,
                "params": 10,
            }
            for m, ms in (("flops", 1.5), ("latency", latency_ms))
        ]
        meta = {
            "command": f"python benchmarks/latency_budget.py --first-seed {seed}",
            "commit": "0" * 40,
            "backend": "tensorflow",
            "keras": "3",
            "machine": "m",
        }
        path = tmp_path / f"seed{seed}.json"
        path.write_text(json.dumps({"meta": meta, "rows": rows}))
        return str(path)

    a, b = run(0, 0.80, 1.0), run(1, 0.86, 1.2)
    latency_budget = benchmark("latency_budget")
    assert latency_budget.main(["--combine", a, b, "--out", str(tmp_path / "both")]) == 0
    table = (tmp_path / "both" / "table.md").read_text()
    assert "--first-seed 0" in table and "--first-seed 1" in table
    # means over both seeds: measured 1.5 / 1.0 (never within 10 %), speedup 2.0 / 1.5,
    # accuracy (80 + 86) / 2 with sd 6 / sqrt(2), drop 0.9 - 0.83
    flops = "| lenet | 32 | 1/2 | flops | 2 | 1.50 ± 0.00 | 0 of 2 | 1.33x | 83.00 ± 4.24 (+7.00) |"
    assert flops + " 0.40 |" in table
    # the latency target: 1.0 and 1.2 of the budget, so within 10 % in one seed of two
    assert "| lenet | 32 | 1/2 | latency | 2 | 1.10 ± 0.14 | 1 of 2 | 1.83x |" in table
    assert (tmp_path / "both" / "latency_budget.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="same row twice"):
        latency_budget.main(["--combine", a, a, "--out", str(tmp_path / "twice")])


def test_latency_budget_compares_accuracy_at_equal_measured_latency():

    latency_budget = benchmark("latency_budget")

    def row(method, budget, ms, acc):
        return {"net": "lenet", "seed": 0, "batch": 32, "budget": budget, "method": method,
                "dense_ms": 6.0, "ms": ms, "accuracy": acc}  # fmt: skip

    rows = [
        row("flops", 1 / 2, 3.0, 0.90),  # 2x
        row("flops", 1 / 3, 2.0, 0.80),  # 3x
        row("latency", 1 / 2, 2.4, 0.86),  # 2.5x: the FLOP models give 85 % there
        row("latency", 1 / 3, 1.5, 0.70),  # 4x: faster than any FLOP model
    ]
    table = latency_budget.equal_latency(rows)
    assert "| lenet | 32 | latency | 1 of 2 | +1.00 (+1.00 to +1.00) | 1 of 2 |" in table
    assert "| flops |" not in table


def test_paired_ms_times_the_two_calls_alternately(fake_clock):
    inference_speed = benchmark("inference_speed")
    call, order = fake_clock
    a_ms, b_ms = inference_speed.paired_ms(call("a", 0.001), call("b", 0.003), None, repeats=5)
    assert (a_ms, b_ms) == (pytest.approx(1.0), pytest.approx(3.0))
    assert order == ["a", "b"] * 7  # two untimed rounds, then five timed
