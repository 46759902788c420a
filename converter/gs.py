"""onnx-graphsurgeon at the API boundary: a user's ``gs.Graph`` in, a ``gs.Graph`` out.

The only module that imports onnx_graphsurgeon, and only lazily: it is the optional ``[gs]``
extra, and ruff's banned-api rule (pyproject.toml) keeps it out of every other module. The
converter itself edits protobuf (graph.py), because gs's round trip drops initializers that are
also graph inputs, model metadata and doc strings. Here nothing more can be lost than gs already
lost: a ``gs.Graph`` holds only what gs keeps, so ``gs.export_onnx`` hands the rewrite the user's
whole graph, and ``gs.import_onnx`` gives the rewritten model back as a graph. What gs allows and an
ONNX model does not is settled here: nodes out of order are sorted, a cycle is refused in one line.
"""

from __future__ import annotations

import sys
from typing import Any

import onnx

from converter.files.load import sort_nodes


def is_graph(obj: object) -> bool:
    """True for an ``onnx_graphsurgeon.Graph``. Imports nothing: whoever holds one has imported gs already."""
    gs = sys.modules.get("onnx_graphsurgeon")
    return gs is not None and isinstance(obj, gs.Graph)


def to_model(graph: Any) -> onnx.ModelProto:
    """The graph as an ONNX model (its opsets, IR version and producer come along; the graph is not modified).

    A ``gs.Graph`` keeps its nodes in whatever order they were added, and can hold a cycle (a node fed
    by its own output): the model's nodes are put in a topological order, and a cycle is refused.

    Raises:
        GraphCycle: (an InputError) some nodes form a cycle, named in the message; the rewrite's
            walks follow producers and would never end.
    """
    model = _gs().export_onnx(graph)
    sort_nodes(model, "the gs.Graph")
    return model


def to_graph(model: onnx.ModelProto) -> Any:
    """The model as a new ``gs.Graph``."""
    return _gs().import_onnx(model)


def _gs() -> Any:
    try:
        import onnx_graphsurgeon
    except ImportError as e:  # pragma: no cover - a gs.Graph cannot exist without it
        raise ImportError("onnx-graphsurgeon is not installed (pip install 'dense2conv[gs]')") from e
    return onnx_graphsurgeon
