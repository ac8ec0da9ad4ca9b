"""Which code version produced each committed result file: writes
`benchmarks/results/PROVENANCE.md`.

For every file git tracks under `benchmarks/results/`: the commit the file names
itself (a `"commit"` field, or `at <hash>` after a table's command), else the
commit that first added it to git (the code that produced it is that commit or
its parent), else, for a file not committed yet, the commit checked out now.
Run it before committing new results; `tests/test_benchmarks.py` checks that
every result file is listed.

    python benchmarks/provenance.py
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path("benchmarks/results")
OUT = RESULTS / "PROVENANCE.md"
NAMED = re.compile(r'"commit":\s*"([0-9a-f]{7,40})"|` at ([0-9a-f]{7,40})\b')


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()  # fmt: skip


def named_commit(path: Path) -> str | None:
    try:
        text = (ROOT / path).read_text(errors="strict")[:200_000]
    except (UnicodeDecodeError, OSError):
        return None  # a figure or a packed cache
    found = NAMED.search(text)
    return (found.group(1) or found.group(2))[:10] if found else None


def provenance(path: Path, head: str) -> tuple[str, str]:
    named = named_commit(path)
    if named:
        return named, "named in the file"
    added = git("log", "--follow", "--diff-filter=A", "--format=%h", "--", str(path)).splitlines()
    if added:
        return added[-1][:10], "committed with"
    if path.suffix == ".gz":
        return head, "packed at (from the runs listed beside it)"
    return head, "not committed yet; produced at or after"


def files() -> list[Path]:
    tracked = git("ls-files", str(RESULTS)).splitlines()
    untracked = git("ls-files", "--others", "--exclude-standard", str(RESULTS)).splitlines()
    return sorted(Path(f) for f in {*tracked, *untracked} if Path(f) != OUT)


def main() -> int:
    head = git("rev-parse", "--short=10", "HEAD")
    lines = [
        "# Provenance of the result files",
        "",
        "Written by `python benchmarks/provenance.py`: for each file, the code version",
        "that produced it (named in the file, or the commit that first added it).",
        "",
        "| file | commit | how known |",
        "|---|---|---|",
    ]
    for path in files():
        commit, how = provenance(path, head)
        lines.append(f"| {path.relative_to(RESULTS).as_posix()} | {commit} | {how} |")
    (ROOT / OUT).write_text("\n".join(lines) + "\n")
    print(f"{len(lines) - 7} files -> {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
