"""examples/notebook.ipynb runs top to bottom in a real Jupyter kernel (nbclient), and its outputs
hold the inline viewers."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "notebook.ipynb"


def test_example_notebook_executes():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    ).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    printed = "".join(o.get("text", "") for o in code[0].outputs)
    assert "previous-token head: (0, 2)" in printed
    html_outputs = [o for c in code for o in c.outputs if "text/html" in o.get("data", {})]
    assert len(html_outputs) == 4  # show, head_view, model_view (returned), neuron_view
    for output in html_outputs:
        assert "<iframe srcdoc=" in output["data"]["text/html"]
    assert "HTML" in "".join(o.get("text", "") for o in code[3].outputs)
