"""What every benchmark writes beside its results: the command that ran, the git
commit, the library versions and the machine."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def commit() -> str:
    """The commit checked out (empty outside a git checkout)."""
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True, check=False)  # fmt: skip
    return done.stdout.strip()


def meta(script: str, argv: list[str] | None, **extra) -> dict:
    """`{"command", "commit", "backend", "keras", "python", "machine", **extra}` for a
    run of `benchmarks/<script>` with `argv` (None: the process's own)."""
    import keras

    args = sys.argv[1:] if argv is None else argv
    return {
        "command": " ".join(["python", f"benchmarks/{script}", *args]),
        "commit": commit(),
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        **extra,
    }


def header(info: dict) -> str:
    """The first line of a table.md: how to make it again."""
    return (f"Command: `{info['command']}` at {info['commit'][:10]} ({info['backend']}, "
            f"Keras {info['keras']}, {info['machine']})")  # fmt: skip


def write(out: str | os.PathLike, script: str, argv, args, rows: list, text: str,
          stem: tuple[str, str] = ("results", "table")) -> None:  # fmt: skip
    """A probe's files in `out`: `<stem[0]>.json` (`{"meta", "rows"}`) and
    `<stem[1]>.md` (the command line, then `text`)."""
    import json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info = meta(script, argv, args=vars(args))
    (out / f"{stem[0]}.json").write_text(json.dumps({"meta": info, "rows": rows}, indent=1))
    (out / f"{stem[1]}.md").write_text(f"{header(info)}\n\n{text}\n")
