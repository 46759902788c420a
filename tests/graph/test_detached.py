"""Detached weights: written from their arrays, and the file is the same bytes as if they had been in the model."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

import converter
from converter.files.save import save
from converter.graph import wire
from converter.graph.detached import DetachedWeights
from models.graphs import convnext_stage, dense_in_if, reshape_sandwich
from tests.conftest import dense_model
from tests.test_preservation import rich_model

RNG = np.random.default_rng(11)


def with_placeholders(model: onnx.ModelProto) -> tuple[onnx.ModelProto, DetachedWeights]:
    """``model`` plus three detached weights, one of them followed by an ordinary initializer."""
    detached = DetachedWeights()
    detached.add(model.graph, "new_a", RNG.standard_normal((6, 4, 1, 1)).astype(np.float32))
    detached.add(model.graph, "new_empty", np.zeros((0, 3), np.float16))
    model.graph.initializer.append(numpy_helper.from_array(np.arange(5, dtype=np.int64), "appended_later"))
    detached.add(model.graph, "new_b", RNG.standard_normal(300).astype(np.float64))
    return model, detached


def attached_bytes(model: onnx.ModelProto, detached: DetachedWeights) -> bytes:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    detached.attach(copy)
    return copy.SerializeToString()


@pytest.mark.parametrize("maker", [rich_model, lambda: convnext_stage(8, 5, 7, blocks=1)], ids=["rich", "convnext"])
def test_saved_bytes_equal_saving_the_attached_model(tmp_path: Path, maker) -> None:
    model, detached = with_placeholders(maker())
    expected = attached_bytes(model, detached)
    save(model, tmp_path / "m.onnx", detached=detached)
    assert (tmp_path / "m.onnx").read_bytes() == expected
    loaded = onnx.load(tmp_path / "m.onnx")
    values = {t.name: numpy_helper.to_array(t) for t in loaded.graph.initializer}
    np.testing.assert_array_equal(values["new_a"], detached.array("new_a"))
    assert values["new_empty"].shape == (0, 3) and values["new_b"].dtype == np.float64
    # written where they sit among the initializers
    assert [t.name for t in loaded.graph.initializer][-4:] == ["new_a", "new_empty", "appended_later", "new_b"]


def test_unknown_graph_fields_take_the_slow_way_and_keep_them(tmp_path: Path) -> None:
    model = rich_model()
    # Field 99 is not in onnx.proto: a newer writer's extra, which protobuf keeps at the end of the graph.
    model.graph.ParseFromString(model.graph.SerializeToString() + wire.varint(99 << 3) + wire.varint(7))
    model, detached = with_placeholders(model)
    expected = attached_bytes(model, detached)
    save(model, tmp_path / "m.onnx", detached=detached)
    assert (tmp_path / "m.onnx").read_bytes() == expected
    assert wire.varint(99 << 3) + wire.varint(7) in expected


@pytest.mark.parametrize("threshold", [0, 10**6], ids=["to-data-file", "inline"])
def test_external_data_save_writes_detached_weights(tmp_path: Path, threshold: int) -> None:
    model, detached = with_placeholders(rich_model())
    save(model, tmp_path / "m.onnx", external_data=True, size_threshold=threshold, detached=detached)
    loaded = onnx.load(tmp_path / "m.onnx")
    values = {t.name: numpy_helper.to_array(t) for t in loaded.graph.initializer}
    for name in ("new_a", "new_empty", "new_b"):
        np.testing.assert_array_equal(values[name], detached.array(name))
    assert not any(
        DetachedWeights.is_placeholder(t) for t in onnx.load(tmp_path / "m.onnx", load_external_data=False).graph.initializer
    )


def test_a_lazy_weight_is_made_only_when_written_and_each_time(tmp_path: Path) -> None:
    calls = []
    value = RNG.standard_normal((3, 4, 1, 1)).astype(np.float32)

    def make() -> np.ndarray:
        calls.append(1)
        return value

    model, detached = rich_model(), DetachedWeights()
    placeholder = detached.add_lazy(model.graph, "lazy", make, (3, 4, 1, 1), np.dtype(np.float32))
    assert calls == [] and list(placeholder.dims) == [3, 4, 1, 1] and placeholder.data_type == TensorProto.FLOAT
    save(model, tmp_path / "a.onnx", detached=detached)
    save(model, tmp_path / "b.onnx", detached=detached, external_data=True, size_threshold=0)
    assert len(calls) == 2  # nothing is kept between writes
    for name in ("a.onnx", "b.onnx"):
        loaded = {t.name: t for t in onnx.load(tmp_path / name).graph.initializer}
        np.testing.assert_array_equal(numpy_helper.to_array(loaded["lazy"]), value)


def test_a_lazy_weight_that_comes_out_other_than_declared_is_a_bug_not_a_file(tmp_path: Path) -> None:
    model, detached = rich_model(), DetachedWeights()
    detached.add_lazy(model.graph, "lazy", lambda: np.zeros((3, 4), np.float32), (4, 3), np.dtype(np.float32))
    with pytest.raises(AssertionError, match="declared"):
        save(model, tmp_path / "m.onnx", detached=detached)
    assert list(tmp_path.iterdir()) == []


def test_a_placeholder_cannot_be_read_as_if_it_were_data() -> None:
    model, _ = with_placeholders(rich_model())
    placeholder = next(t for t in model.graph.initializer if t.name == "new_a")
    assert DetachedWeights.is_placeholder(placeholder) and list(placeholder.dims) == [6, 4, 1, 1]
    # Which error type onnx raises is its business; that it refuses, naming the placeholder's location, is ours.
    with pytest.raises(Exception, match=re.escape(DetachedWeights.LOCATION)):
        numpy_helper.to_array(placeholder)


def test_raw_sizes_read_from_the_bytes_match_the_parsed_model() -> None:
    model = rich_model()
    model.graph.initializer.append(TensorProto(name="listed", data_type=TensorProto.FLOAT, dims=[2], float_data=[1, 2]))
    model.graph.initializer.append(numpy_helper.from_array(np.ones(70000, np.float32), "big"))
    sizes = wire.initializer_raw_sizes(model.SerializeToString())
    assert sizes == [len(t.raw_data) if t.HasField("raw_data") else None for t in model.graph.initializer]
    assert sizes[-2:] == [None, 280000]


@pytest.mark.parametrize(
    "maker",
    [
        rich_model,
        lambda: dense_model(weight="constant_node", bias="constant_node"),
        dense_in_if,
        lambda: convnext_stage(8, 5, 7, blocks=2),
        lambda: reshape_sandwich(core="Gemm", trans_b=1, alpha=0.5),
    ],
    ids=["rich", "constant-nodes", "if", "convnext", "gemm-transB-alpha"],
)
def test_no_verify_writes_the_same_file_as_a_verified_run(tmp_path: Path, maker) -> None:
    """--no-verify rewrites in place with detached weights; the verified run copies and attaches."""
    onnx.save(maker(), tmp_path / "in.onnx")
    fast = converter.convert(tmp_path / "in.onnx", tmp_path / "fast.onnx", verify_outputs=False, layout="keep-all")
    checked = converter.convert(tmp_path / "in.onnx", tmp_path / "checked.onnx", input_shapes=None, layout="keep-all")
    assert fast.written and checked.ok and checked.rewrite.rewritten > 0
    assert (tmp_path / "fast.onnx").read_bytes() == (tmp_path / "checked.onnx").read_bytes()


def _external_copy(model: onnx.ModelProto, folder: Path) -> Path:
    """``model`` saved with every tensor over 1 KB in ``<name>.data`` (loaded detached by convert)."""
    path = folder / "ext.onnx"
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location="ext.data", size_threshold=1024)
    return path


def test_external_weights_are_loaded_detached_and_the_output_is_the_same_file(tmp_path: Path) -> None:
    """Loaded into arrays (not into the model), verified with shared buffers, written where they sat."""
    from converter.files.load import DETACH_ABOVE, load_with_sources

    model = convnext_stage(96, 5, 7, blocks=1)  # 96 x 384 weights: 144 KB, above the detach size
    model.graph.initializer[0].doc_string = "kept"
    inline = tmp_path / "inline.onnx"
    onnx.save(model, inline)
    external = _external_copy(model, tmp_path)
    store = DetachedWeights()
    loaded, _ = load_with_sources(external, detached=store)
    big = [t for t in loaded.graph.initializer if DetachedWeights.is_placeholder(t)]
    assert big and all(math_prod(t.dims) * 4 > DETACH_ABOVE for t in big) and not any(t.HasField("raw_data") for t in big)
    a = converter.convert(inline, tmp_path / "a.onnx")
    b = converter.convert(external, tmp_path / "b.onnx")
    assert a.ok and b.ok and b.verify.structure["proved"]
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert onnx.load(tmp_path / "b.onnx").graph.initializer[0].doc_string == "kept"


def math_prod(dims) -> int:  # noqa: ANN001
    out = 1
    for d in dims:
        out *= d
    return out


def test_keep_only_makes_the_kept_lazy_weights_and_forgets_their_sources_as_it_goes() -> None:
    model, store = rich_model(), DetachedWeights()
    graph = model.graph
    source = RNG.standard_normal((4, 3)).astype(np.float32)
    store.add(graph, "src", source)
    made = []

    def from_src(scale: float):  # noqa: ANN202
        def make() -> np.ndarray:
            made.append(scale)
            return (store.array("src").T * np.float32(scale)).copy()

        return make

    store.add_lazy(graph, "a", from_src(1.0), (3, 4), np.dtype(np.float32), source="src")
    store.add_lazy(graph, "b", from_src(2.0), (3, 4), np.dtype(np.float32), source="src")
    store.add(graph, "unused", np.ones(5, np.float32))
    store.keep_only(["a", "b"])
    assert made == [1.0, 2.0] and "src" not in store and "unused" not in store and len(store) == 2
    np.testing.assert_array_equal(store.array("b"), source.T * 2)
    store.array("a")
    assert made == [1.0, 2.0]  # kept as arrays: not made again


def test_verification_sessions_compute_with_the_stored_arrays_in_place() -> None:
    from converter.verifier.sessions import Runner, shares_buffers

    assert shares_buffers()
    model, store = dense_model(x_shape=(2, 3, 5, 4), bias=None), DetachedWeights()
    w = next(t for t in model.graph.initializer if t.name == "W")
    value = numpy_helper.to_array(w).copy()
    store.adopt(w, value)
    x = RNG.standard_normal((2, 3, 5, 4)).astype(np.float32)
    runner = Runner(model, ["CPUExecutionProvider"], values=store)
    np.testing.assert_allclose(runner.run({"x": x})["mm"], x @ value, rtol=1e-5, atol=1e-6)
    value[:] = 0  # the session reads this very buffer
    assert not runner.run({"x": x})["mm"].any()
