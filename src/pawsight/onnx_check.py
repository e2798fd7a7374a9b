"""The one check every ONNX graph passes before ONNX Runtime sees it: is this a pawsight model, and only that?

An .onnx file is code from whoever made it. Two things make a foreign graph dangerous or confusing:
- *External data*: a tensor may say "my bytes are in the file secret.txt". ONNX Runtime then reads that file
  (relative to the current folder when the model is loaded from memory) and the bytes flow into the outputs,
  so `cd ~; pawsight serve downloaded.onnx` would let any client read a key file. Every tensor of the graph
  (initializers, sparse initializers, tensors in node attributes, subgraphs of If/Loop/Scan, local functions,
  training-info graphs) must hold its own bytes. As a second wall, `inference.onnx_session` creates sessions
  from bytes only, with ONNX Runtime's external-data folder pointed at an empty private folder.
- *A different contract*: custom-op domains, other inputs or outputs, another dtype, a class count that does
  not match the metadata, or metadata that is not what `pawsight export` writes. Each is refused with one
  line ("not a pawsight model: ...") instead of failing later inside ONNX Runtime or in the JSON answer.

The graph is parsed with the `onnx` package (protobuf only, no PyTorch; a base dependency for this reason),
without loading any external data. This module is the single owner of that check: `inference.OnnxPredictor`
calls it, and every loader (an exported .onnx file, a run's RUN/model.onnx, predict, evaluate, serve, the
Python API) builds its predictor there. What export writes is described in export.py.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

from .errors import PawsightError, shown

METADATA_KEY = "pawsight"  # metadata_props entry holding the JSON description (inference.ONNX_METADATA_KEY)
INPUT = "pixels"
OUTPUTS = ("probabilities", "unknown_score")
EXPORT_FORMAT = 1  # export.EXPORT_FORMAT (kept here so checking needs no export import)
STANDARD_DOMAINS = ("", "ai.onnx")  # the operators ONNX Runtime implements itself; no custom ops


def check_graph(blob: bytes, name: str) -> dict[str, Any]:
    """The pawsight metadata of the ONNX graph `blob` (from the file or run called `name`), after checking
    that the graph holds all its own data and has exactly the inputs, outputs, operators and metadata
    `pawsight export` writes. Anything else is a one-line PawsightError."""
    try:
        import onnx
        from onnx import TensorProto
    except ImportError:
        raise PawsightError("checking an ONNX model needs the onnx package: pip install onnx") from None
    try:
        model = onnx.ModelProto()
        model.ParseFromString(blob)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends: not an ONNX file
        raise PawsightError(f"{shown(name)} is not an ONNX model ({type(exc).__name__})") from None
    if not model.HasField("graph"):
        raise PawsightError(f"{shown(name)} is not an ONNX model (no graph)")

    def refuse(why: str) -> PawsightError:
        return PawsightError(f"{shown(name)}: not a pawsight model: {why}")

    for tensor, where in _tensors(model):
        if tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data):
            location = next((e.value for e in tensor.external_data if e.key == "location"), "?")
            raise refuse(f"tensor {shown(tensor.name or '?')} ({where}) keeps its data in another file "
                         f"({shown(location)}); pawsight models hold all their data and never read other "
                         "files")
    for opset in model.opset_import:
        if opset.domain not in STANDARD_DOMAINS:
            raise refuse(f"it uses the custom operator domain {shown(opset.domain)}")
    for node in _nodes(model):
        if node.domain not in STANDARD_DOMAINS:
            raise refuse(f"node {shown(node.op_type)} uses the custom operator domain {shown(node.domain)}")
    if len(model.functions):
        raise refuse("it defines its own functions")

    meta = _metadata(model, refuse)
    graph = model.graph
    initializers = {t.name for t in graph.initializer} | {t.values.name for t in graph.sparse_initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if [i.name for i in inputs] != [INPUT]:
        raise refuse(f"its inputs are {_names(inputs)}, not one input {INPUT!r}")
    _check_tensor_type(inputs[0], TensorProto.UINT8, 4, refuse, last=3)
    if tuple(o.name for o in graph.output) != OUTPUTS:
        raise refuse(f"its outputs are {_names(graph.output)}, not {', '.join(OUTPUTS)}")
    probabilities, score = graph.output
    width = _check_tensor_type(probabilities, TensorProto.FLOAT, 2, refuse)
    _check_tensor_type(score, TensorProto.FLOAT, 1, refuse)
    if width is not None and width != len(meta["classes"]):
        raise refuse(f"its probabilities have {width} columns but its metadata names "
                     f"{len(meta['classes'])} classes")
    return meta


def _metadata(model: Any, refuse: Any) -> dict[str, Any]:
    """The JSON under METADATA_KEY, checked field by field (what inference.OnnxPredictor reads)."""
    from .images import Preprocessing

    entries = [p.value for p in model.metadata_props if p.key == METADATA_KEY]
    if len(entries) != 1:
        raise refuse(f"it has {'no' if not entries else 'several'} '{METADATA_KEY}' metadata entries "
                     "(is it a file written by 'pawsight export'?)")
    try:
        meta = json.loads(entries[0])
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise refuse(f"its '{METADATA_KEY}' metadata is not a JSON object")
    if meta.get("format") != EXPORT_FORMAT:
        raise refuse(f"its metadata has export format {shown(repr(meta.get('format')))}; this pawsight reads "
                     f"format {EXPORT_FORMAT}")
    if meta.get("approach") not in ("transfer", "scratch"):
        raise refuse(f"its metadata names the approach {shown(repr(meta.get('approach')))}")
    classes = meta.get("classes")
    if not (isinstance(classes, list) and len(classes) >= 2
            and all(isinstance(c, str) and c.strip() for c in classes) and len(set(classes)) == len(classes)):
        raise refuse("its metadata 'classes' is not a list of two or more distinct class names")
    prep = meta.get("preprocessing")
    try:
        if not isinstance(prep, dict) or isinstance(prep.get("size"), bool) or \
                not isinstance(prep.get("size"), int):
            raise ValueError("size must be a whole number")
        Preprocessing.from_dict(prep)
    except (KeyError, TypeError, ValueError) as exc:
        raise refuse(f"its metadata 'preprocessing' is invalid ({shown(str(exc))})") from None
    neither = meta.get("neither")
    if neither is not None:
        threshold = neither.get("threshold") if isinstance(neither, dict) else None
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or \
                not math.isfinite(threshold) or threshold < 0:
            raise refuse("its metadata 'neither' has no valid threshold (a finite number >= 0)")
    return meta


def _check_tensor_type(value: Any, elem_type: int, rank: int, refuse: Any, last: int | None = None
                       ) -> int | None:
    """Refuse a graph input/output that is not a tensor of `elem_type` and `rank`; returns the size of its
    last dimension when the graph fixes it."""
    from onnx import TensorProto

    kind = value.type.WhichOneof("value")
    tensor = value.type.tensor_type
    if kind != "tensor_type" or tensor.elem_type != elem_type:
        got = TensorProto.DataType.Name(tensor.elem_type) if kind == "tensor_type" else kind
        raise refuse(f"{value.name!r} is {shown(got)}, not {TensorProto.DataType.Name(elem_type)}")
    dims = list(tensor.shape.dim) if tensor.HasField("shape") else None
    if dims is None or len(dims) != rank:
        raise refuse(f"{value.name!r} does not have {rank} dimension(s)")
    size = dims[-1].dim_value if dims[-1].HasField("dim_value") else None
    if last is not None and size != last:
        raise refuse(f"{value.name!r} must end in {last} colour channels")
    return size


def _names(values: Any) -> str:
    return ", ".join(repr(shown(v.name)) for v in values) or "none"


def _graphs(model: Any) -> Iterator[tuple[Any, str]]:
    """Every graph of the model: the main one, training-info graphs, and every subgraph held in a node
    attribute (If/Loop/Scan bodies), in those graphs and in local functions."""
    from onnx import AttributeProto

    def subgraphs(nodes: Any, where: str) -> list[tuple[Any, str]]:
        found = []
        for node in nodes:
            for attr in node.attribute:
                if attr.type == AttributeProto.GRAPH:
                    found.append((attr.g, f"{where}, subgraph of {node.op_type}"))
                elif attr.type == AttributeProto.GRAPHS:
                    found += [(g, f"{where}, subgraph of {node.op_type}") for g in attr.graphs]
        return found

    pending = [(model.graph, "graph")]
    for i, info in enumerate(model.training_info):
        pending += [(info.initialization, f"training info {i}"), (info.algorithm, f"training info {i}")]
    for function in model.functions:
        pending += subgraphs(function.node, f"function {function.name}")
    while pending:
        graph, where = pending.pop()
        yield graph, where
        pending += subgraphs(graph.node, where)


def _nodes(model: Any) -> Iterator[Any]:
    for graph, _ in _graphs(model):
        yield from graph.node
    for function in model.functions:
        yield from function.node


def _tensors(model: Any) -> Iterator[tuple[Any, str]]:
    """Every TensorProto of the model with where it sits: initializers, sparse initializers (values and
    indices), constant tensors in node attributes (TENSOR, TENSORS, SPARSE_TENSOR(S)), in every graph."""
    from onnx import AttributeProto

    def in_nodes(nodes: Any, where: str) -> Iterator[tuple[Any, str]]:
        for node in nodes:
            for attr in node.attribute:
                at = f"{where}, attribute {attr.name} of {node.op_type}"
                if attr.type == AttributeProto.TENSOR:
                    yield attr.t, at
                elif attr.type == AttributeProto.TENSORS:
                    yield from ((t, at) for t in attr.tensors)
                elif attr.type == AttributeProto.SPARSE_TENSOR:
                    yield from ((attr.sparse_tensor.values, at), (attr.sparse_tensor.indices, at))
                elif attr.type == AttributeProto.SPARSE_TENSORS:
                    for s in attr.sparse_tensors:
                        yield from ((s.values, at), (s.indices, at))

    for graph, where in _graphs(model):
        yield from ((t, f"{where} initializer") for t in graph.initializer)
        for s in graph.sparse_initializer:
            yield from ((s.values, f"{where} sparse initializer"), (s.indices, f"{where} sparse initializer"))
        yield from in_nodes(graph.node, where)
    for function in model.functions:
        yield from in_nodes(function.node, f"function {function.name}")
