"""The walkthrough notebook runs top to bottom (on a small setting)."""

import json
from pathlib import Path

import nbformat
import pytest

nbclient = pytest.importorskip("nbclient")  # part of the `test` extra

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "walkthrough.ipynb"


def test_walkthrough_executes(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1
    params[0].source = 'DATASET = "mnist"\nLIMIT = 600\nEPOCHS = 2\nTARGET = 0.5\nSEED = 0'
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})  # fmt: skip
    client.execute()
    text = json.dumps([c.get("outputs", []) for c in nb.cells if c.cell_type == "code"])
    assert "identical predictions" in text and "image/png" in text
    assert "Error" not in text.replace("max |compact", "")


def test_committed_notebook_has_outputs_and_is_small():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert any("image/png" in o.get("data", {}) for o in outputs), "commit it executed"
    assert NOTEBOOK.stat().st_size < 1_000_000
