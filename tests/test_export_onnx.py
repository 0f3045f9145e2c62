"""ONNX export: full and step graphs against PyTorch under onnxruntime, determinism, the CLI."""
import types

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from ecdp.export import ExportSpec, export_onnx, run_step_graphs
from ecdp.export import onnx_export
from ecdp.export.cli import main
from helpers import LR_SIZE, example_batch, pytorch_sr, save_export_model

TOLERANCE = 1e-4


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_export_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def cli_export(tiny_model, tmp_path_factory):
    """The full graph written by `ecdp-export --onnx`: (exit code, output path)."""
    out = tmp_path_factory.mktemp("cli") / "full.onnx"
    code = main(["--onnx", str(tiny_model), "-o", str(out), "--lr-size", "8x8", "--batch", "1",
                 "--solver", "heun", "--steps", "2"])
    return code, out


def test_full_graph_matches_pytorch(tiny_model, cli_export):
    code, out = cli_export
    assert code == 0
    assert [p.name for p in out.parent.iterdir()] == ["full.onnx"]  # written atomically: no temp file left
    lr, noise = example_batch()
    (sr,) = session(out).run(None, {"lr": lr.numpy(), "noise": noise.numpy()})
    assert np.abs(sr - pytorch_sr(tiny_model, lr, noise).numpy()).max() <= TOLERANCE


def test_group_norm_is_instance_norm_at_opset_18(cli_export):
    model = onnx.load(str(cli_export[1]))
    ops = {node.op_type for node in model.graph.node}
    assert "InstanceNormalization" in ops and "GroupNormalization" not in ops
    assert [(o.domain, o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")] == [("", 18)]
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["ecdp.graph"] == "full" and meta["ecdp.lr_size"] == "8x8" and meta["ecdp.solver"] == "heun"


def test_exporting_twice_gives_the_same_file(tiny_model, cli_export, tmp_path):
    (again,) = export_onnx(tiny_model, tmp_path / "again.onnx", ExportSpec(lr_size=LR_SIZE, solver="heun", steps=2))
    assert again.read_bytes() == cli_export[1].read_bytes()


def test_step_graph_host_loop_matches_pytorch(tiny_model, tmp_path):
    encoder, step = export_onnx(tiny_model, tmp_path / "step.onnx", ExportSpec(lr_size=LR_SIZE), graph="step")
    assert encoder.name == "step.encoder.onnx"
    lr, noise = example_batch()
    sr = run_step_graphs(session(encoder), session(step), lr.numpy(), noise.numpy())
    assert np.abs(sr - pytorch_sr(tiny_model, lr, noise).numpy()).max() <= TOLERANCE


def test_fp16_graph_keeps_fp32_io_and_stays_close(tiny_model, tmp_path):
    spec = ExportSpec(lr_size=LR_SIZE, solver="euler", steps=1, precision="fp16")
    (path,) = export_onnx(tiny_model, tmp_path / "fp16.onnx", spec)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert {init.data_type for init in model.graph.initializer} >= {onnx.TensorProto.FLOAT16}
    lr, noise = example_batch()
    (sr,) = session(path).run(None, {"lr": lr.numpy(), "noise": noise.numpy()})
    assert sr.dtype == np.float32
    assert np.abs(sr - pytorch_sr(tiny_model, lr, noise, solver="euler", steps=1).numpy()).max() <= 1e-2


def test_bf16_graph_is_valid_onnx_at_opset_22(tiny_model, tmp_path):
    spec = ExportSpec(lr_size=LR_SIZE, solver="euler", steps=1, precision="bf16")
    (path,) = export_onnx(tiny_model, tmp_path / "bf16.onnx", spec)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)  # Conv takes bfloat16 from opset 22 on
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [22]
    assert onnx.TensorProto.BFLOAT16 in {init.data_type for init in model.graph.initializer}


def test_step_graph_refuses_dpmpp2m(tiny_model, tmp_path, capsys):
    out = tmp_path / "step.onnx"
    code = main(["--onnx", str(tiny_model), "-o", str(out), "--lr-size", "8x8", "--solver", "dpmpp2m",
                 "--graph", "step"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "--graph full" in err and len(err.splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_bad_model_path_is_one_sentence_and_no_file(tmp_path, capsys):
    out = tmp_path / "out.onnx"
    code = main(["--onnx", str(tmp_path / "no-such-model"), "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("ecdp-export: error: ") and "no-such-model" in err
    assert len(err.splitlines()) == 1 and not out.exists()


def test_failed_write_leaves_no_file(tiny_model, tmp_path, monkeypatch):
    def failing_save(proto, path):
        with open(path, "wb") as f:
            f.write(b"half a model")
        raise OSError("disk full")

    monkeypatch.setattr(onnx_export, "export_program", lambda module, args: None)
    monkeypatch.setattr(onnx_export.torch.onnx, "export", lambda *a, **k: types.SimpleNamespace(
        model_proto=onnx.ModelProto()))
    monkeypatch.setattr(onnx_export.onnx, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        main(["--onnx", str(tiny_model), "-o", str(tmp_path / "out.onnx"), "--lr-size", "8x8"])
    assert not list(tmp_path.iterdir())


def test_an_interrupted_step_export_leaves_the_earlier_pair_as_it_was(tiny_model, tmp_path, monkeypatch):
    """Both graphs are made before either is written: an interrupt while the step graph is traced
    leaves no lone encoder graph, and over an earlier export no pair from two models."""
    for name in ("sr.encoder.onnx", "sr.onnx"):
        (tmp_path / "old" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "old" / name).write_text(f"earlier {name}")

    def trace(module, args, inputs, outputs, path, *rest):
        if path.name == "sr.onnx":
            raise KeyboardInterrupt
        return onnx.ModelProto()
    monkeypatch.setattr(onnx_export, "onnx_model", trace)
    for folder in ("old", "new"):
        assert main(["--onnx", str(tiny_model), "-o", str(tmp_path / folder / "sr.onnx"), "--lr-size", "8x8",
                     "--graph", "step"]) == 130
    assert {p.name: p.read_text() for p in (tmp_path / "old").iterdir()} == {
        "sr.encoder.onnx": "earlier sr.encoder.onnx", "sr.onnx": "earlier sr.onnx"}
    assert list((tmp_path / "new").iterdir()) == []


def test_graphs_of_two_exports_are_refused_together(tiny_model, tmp_path):
    other = save_export_model(tmp_path / "other", seed=5)
    first = export_onnx(tiny_model, tmp_path / "a.onnx", ExportSpec(lr_size=LR_SIZE), graph="step")
    second = export_onnx(other, tmp_path / "b.onnx", ExportSpec(lr_size=LR_SIZE), graph="step")
    lr, noise = example_batch()
    with pytest.raises(ValueError, match="come from different exports"):
        run_step_graphs(session(first[0]), session(second[1]), lr.numpy(), noise.numpy())


@pytest.mark.parametrize("options, sentence", [
    (["--steps", "abc"], "ecdp-export: error: argument --steps: 'abc' is not a positive integer"),
    (["--workspace", "nan"], "ecdp-export: error: argument --workspace: 'nan' is not a finite number of GiB above 0"),
    (["--lr-size", "100000x100000"], "ecdp-export: error: batch 1 of 100000x100000 LR images is 10,000,000,000 "
                                     "pixels, more than the 16,777,216 an exported graph may take."),
])
def test_option_errors_are_one_sentence_and_exit_1(tiny_model, tmp_path, capsys, options, sentence):
    try:
        code = main(["--onnx", str(tiny_model), "-o", str(tmp_path / "out.onnx"), *options])
    except SystemExit as e:
        code = e.code
    assert code == 1 and capsys.readouterr().err.splitlines() == [sentence]
    assert not list(tmp_path.iterdir())
