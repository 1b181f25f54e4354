"""ONNX Runtime's ORT flatbuffer format back to an ONNX ``ModelProto``.

An ``.ort`` file is a model already laid out for one runtime: onnxruntime
loads it but will not optimise it again (no constant folding, no operator
fusion, no quantisation). Rebuilt as ONNX, the same graph goes through the
usual tools. The flatbuffer readers are the ones onnxruntime ships in
``onnxruntime/tools/ort_format_model``.

What is carried over: opset imports, model metadata, every graph (and the
subgraphs held in node attributes, such as ``If`` branches), nodes in
topological order, dense and sparse initializers (raw bytes, any element
type, strings), graph inputs and outputs with their types, and the value
types onnxruntime recorded for intermediate values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

#: the model's ``ModelVersion`` when none was set (the flatbuffer's default)
_UNSET_VERSION = 2**63 - 1

_TYPE_TENSOR, _TYPE_SEQUENCE, _TYPE_MAP = 1, 2, 3
_DIM_VALUE, _DIM_PARAM = 1, 2
_NODE_FUSED = 1


class OrtFormatError(ValueError):
    """The ``.ort`` file holds something this converter cannot express as ONNX."""


def _schema() -> Any:
    # importing the package puts its flatbuffer readers on sys.path, where
    # the readers' own nested imports expect them
    import onnxruntime.tools.ort_format_model  # noqa: F401
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py import fbs

    return fbs


def _text(value: bytes | None) -> str:
    return value.decode("utf-8") if value else ""


def load_ort(path: Path) -> onnx.ModelProto:
    """Read an ``.ort`` file and return the equivalent ONNX model."""
    data = Path(path).read_bytes()
    reader = _schema().InferenceSession.InferenceSession
    if not reader.InferenceSessionBufferHasIdentifier(data, 0):
        raise OrtFormatError(f"{path} is not an ORT format model")
    session = reader.GetRootAs(data, 0)
    model = session.Model()
    if model is None:
        raise OrtFormatError(f"{path} holds no model")
    return _model(model)


def _model(m: Any) -> onnx.ModelProto:
    opsets = [
        helper.make_opsetid(_text(m.OpsetImport(i).Domain()), m.OpsetImport(i).Version())
        for i in range(m.OpsetImportLength())
    ]
    graph = _graph(m.Graph(), "main")
    proto = helper.make_model(graph, opset_imports=opsets)
    proto.ir_version = m.IrVersion()
    proto.producer_name = _text(m.ProducerName())
    proto.producer_version = _text(m.ProducerVersion())
    proto.domain = _text(m.Domain())
    if m.ModelVersion() != _UNSET_VERSION:
        proto.model_version = m.ModelVersion()
    proto.doc_string = _text(m.DocString())
    if m.GraphDocString():
        proto.graph.doc_string = _text(m.GraphDocString())
    for i in range(m.MetadataPropsLength()):
        entry = m.MetadataProps(i)
        prop = proto.metadata_props.add()
        prop.key, prop.value = _text(entry.Key()), _text(entry.Value())
    return proto


def _graph(g: Any, name: str) -> onnx.GraphProto:
    types = {}
    for i in range(g.NodeArgsLength()):
        arg = g.NodeArgs(i)
        types[_text(arg.Name())] = arg
    initializers = [_tensor(g.Initializers(i)) for i in range(g.InitializersLength())]
    sparse = [_sparse(g.SparseInitializers(i)) for i in range(g.SparseInitializersLength())]
    nodes = [g.Nodes(i) for i in range(g.NodesLength())]
    onnx_nodes = [_node(n) for n in nodes if n is not None]

    inputs = [_text(g.Inputs(i)) for i in range(g.InputsLength())]
    outputs = [_text(g.Outputs(i)) for i in range(g.OutputsLength())]
    known = {t.name for t in initializers} | {s.values.name for s in sparse} | set(inputs)
    ordered = _topological(onnx_nodes, known)

    def info(value: str) -> onnx.ValueInfoProto:
        arg = types.get(value)
        if arg is None:
            return helper.make_empty_tensor_value_info(value)
        return _value_info(arg)

    graph = helper.make_graph(
        ordered,
        name,
        [info(v) for v in inputs],
        [info(v) for v in outputs],
        initializer=initializers,
        sparse_initializer=sparse,
    )
    listed = set(inputs) | set(outputs) | {t.name for t in initializers}
    produced = {o for n in ordered for o in n.output}
    for value in sorted(produced - listed):
        if value in types and types[value].Type() is not None:
            graph.value_info.append(_value_info(types[value]))
    return graph


def _topological(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """Nodes in an order where each one's inputs exist before it runs.

    Names a node reads that no node of this graph makes come from an outer
    graph (a subgraph's captured values) or are graph inputs: available.
    """
    producer: dict[str, int] = {}
    for index, node in enumerate(nodes):
        for out in node.output:
            if out:
                producer[out] = index
    needs: list[set[int]] = []
    for index, node in enumerate(nodes):
        wanted = {producer[v] for v in _reads(node) if v in producer and v not in available}
        wanted.discard(index)
        needs.append(wanted)
    users: dict[int, list[int]] = {i: [] for i in range(len(nodes))}
    for index, wanted in enumerate(needs):
        for p in wanted:
            users[p].append(index)
    waiting = [len(w) for w in needs]
    ready = [i for i, n in enumerate(waiting) if n == 0]
    order: list[int] = []
    while ready:
        ready.sort(reverse=True)  # keep the file's own order where it is free
        index = ready.pop()
        order.append(index)
        for user in users[index]:
            waiting[user] -= 1
            if waiting[user] == 0:
                ready.append(user)
    if len(order) != len(nodes):
        raise OrtFormatError("the graph has a cycle")
    return [nodes[i] for i in order]


def _reads(node: onnx.NodeProto) -> set[str]:
    """Every value a node reads, including those its subgraphs capture."""
    names = {v for v in node.input if v}
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for sub in graphs:
            local = {i.name for i in sub.input} | {t.name for t in sub.initializer}
            for inner in sub.node:
                local.update(inner.output)
            for inner in sub.node:
                names.update(_reads(inner) - local)
    return names


def _node(n: Any) -> onnx.NodeProto:
    op = _text(n.OpType())
    if n.Type() == _NODE_FUSED:
        raise OrtFormatError(f"node {_text(n.Name())!r} ({op}) is a runtime-fused node")
    node = helper.make_node(
        op,
        [_text(n.Inputs(i)) for i in range(n.InputsLength())],
        [_text(n.Outputs(i)) for i in range(n.OutputsLength())],
        name=_text(n.Name()),
        domain=_text(n.Domain()) or None,
        doc_string=_text(n.DocString()) or None,
    )
    node.attribute.extend(_attribute(n.Attributes(i)) for i in range(n.AttributesLength()))
    return node


def _attribute(a: Any) -> onnx.AttributeProto:
    kind = a.Type()
    out = onnx.AttributeProto()
    out.name = _text(a.Name())
    if a.DocString():
        out.doc_string = _text(a.DocString())
    out.type = kind
    A = onnx.AttributeProto
    if kind == A.FLOAT:
        out.f = a.F()
    elif kind == A.INT:
        out.i = a.I()
    elif kind == A.STRING:
        out.s = a.S() or b""
    elif kind == A.TENSOR:
        out.t.CopyFrom(_tensor(a.T()))
    elif kind == A.GRAPH:
        out.g.CopyFrom(_graph(a.G(), out.name))
    elif kind == A.FLOATS:
        out.floats.extend(a.Floats(i) for i in range(a.FloatsLength()))
    elif kind == A.INTS:
        out.ints.extend(a.Ints(i) for i in range(a.IntsLength()))
    elif kind == A.STRINGS:
        out.strings.extend(a.Strings(i) for i in range(a.StringsLength()))
    elif kind == A.TENSORS:
        out.tensors.extend(_tensor(a.Tensors(i)) for i in range(a.TensorsLength()))
    elif kind == A.GRAPHS:
        out.graphs.extend(_graph(a.Graphs(i), f"{out.name}_{i}") for i in range(a.GraphsLength()))
    else:
        raise OrtFormatError(f"attribute {out.name!r} has a type ({kind}) with no ORT form")
    return out


def _tensor(t: Any) -> onnx.TensorProto:
    out = onnx.TensorProto()
    out.name = _text(t.Name())
    if t.DocString():
        out.doc_string = _text(t.DocString())
    out.dims.extend(t.Dims(i) for i in range(t.DimsLength()))
    # the flatbuffer's element type numbers are ONNX's
    out.data_type = t.DataType()
    if t.ExternalDataOffset() >= 0:
        raise OrtFormatError(f"tensor {out.name!r} keeps its data outside the model file")
    if out.data_type == onnx.TensorProto.STRING:
        out.string_data.extend(t.StringData(i) for i in range(t.StringDataLength()))
    elif not t.RawDataIsNone():
        out.raw_data = np.asarray(t.RawDataAsNumpy(), dtype=np.uint8).tobytes()
    return out


def _sparse(s: Any) -> onnx.SparseTensorProto:
    out = onnx.SparseTensorProto()
    out.values.CopyFrom(_tensor(s.Values()))
    # onnxruntime stores the indices in the narrowest integer type that
    # holds them; ONNX wants int64
    indices = numpy_helper.to_array(_tensor(s.Indices())).astype(np.int64)
    out.indices.CopyFrom(numpy_helper.from_array(indices))
    out.dims.extend(s.Dims(i) for i in range(s.DimsLength()))
    return out


def _value_info(arg: Any) -> onnx.ValueInfoProto:
    info = onnx.ValueInfoProto()
    info.name = _text(arg.Name())
    if arg.DocString():
        info.doc_string = _text(arg.DocString())
    if arg.Type() is not None:
        info.type.CopyFrom(_type(arg.Type()))
    return info


def _type(t: Any) -> onnx.TypeProto:
    out = onnx.TypeProto()
    if t.Denotation():
        out.denotation = _text(t.Denotation())
    kind, table = t.ValueType(), t.Value()
    if table is None:
        return out
    fbs = _schema()
    if kind == _TYPE_TENSOR:
        tensor = fbs.TensorTypeAndShape.TensorTypeAndShape()
        tensor.Init(table.Bytes, table.Pos)
        out.tensor_type.elem_type = tensor.ElemType()
        shape = tensor.Shape()
        if shape is not None:
            dims = out.tensor_type.shape
            dims.SetInParent()  # a known rank, even zero
            for i in range(shape.DimLength()):
                dim, proto = shape.Dim(i), dims.dim.add()
                if dim.Denotation():
                    proto.denotation = _text(dim.Denotation())
                value = dim.Value()
                if value is None:
                    continue
                if value.DimType() == _DIM_VALUE:
                    proto.dim_value = value.DimValue()
                elif value.DimType() == _DIM_PARAM:
                    proto.dim_param = _text(value.DimParam())
    elif kind == _TYPE_SEQUENCE:
        seq = fbs.SequenceType.SequenceType()
        seq.Init(table.Bytes, table.Pos)
        out.sequence_type.elem_type.CopyFrom(_type(seq.ElemType()))
    elif kind == _TYPE_MAP:
        mapping = fbs.MapType.MapType()
        mapping.Init(table.Bytes, table.Pos)
        out.map_type.key_type = mapping.KeyType()
        out.map_type.value_type.CopyFrom(_type(mapping.ValueType()))
    return out
