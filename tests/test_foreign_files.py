"""Other projects' files (``seg.io.load_foreign``): read with every unknown class inert, never running their code."""

import os
import sys
import types

import numpy as np
import pytest
import torch
from mmseg_reference import EncoderDecoder

from seg.engine.checkpoint import load_trained
from seg.io import Inert, UnsafeFileError, load_foreign, safe_load
from seg.models import model_from_file
from seg.models.layouts import mmseg


class SystemCall:
    """Unpickling this calls os.system: the classic payload."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class Sneaky:
    """Its __setstate__ (pickle's BUILD) writes the marker: code that runs without any __reduce__."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __setstate__(self, state):
        open(state["marker"], "w").close()


@pytest.mark.parametrize("zip_format", [True, False])  # torch.save's format since 1.6, and the legacy one
def test_payloads_in_a_foreign_file_never_run(tmp_path, zip_format):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}, "meta": SystemCall(marker), "hub": Sneaky(marker),
                "eval": Eval(marker)}, path, _use_new_zipfile_serialization=zip_format)
    loaded = load_foreign(path)
    assert not marker.exists()
    assert torch.equal(loaded["state_dict"]["w"], torch.ones(2))
    assert isinstance(loaded["meta"], Inert) and loaded["meta"].qualified_name == f"{os.system.__module__}.system"
    assert loaded["meta"].args == (f"touch {marker}",)
    assert isinstance(loaded["hub"], Inert) and loaded["hub"].state == {"marker": str(marker)}
    assert isinstance(loaded["eval"], Inert) and loaded["eval"].qualified_name == "builtins.eval"
    with pytest.raises(UnsafeFileError, match="refusing to load"):  # this project's own loader still refuses it
        safe_load(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # what an unsafe loader would do: the payloads are real
    assert marker.exists()


class Eval:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return eval, (f"open({self.marker!r}, 'w')",)


def _history_buffer_class():
    """A stand-in for mmengine.logging.history_buffer.HistoryBuffer (mmengine is not installed here): the same
    module path and pickled state (NumPy arrays of logged values and counts)."""
    module = types.ModuleType("mmengine.logging.history_buffer")

    class HistoryBuffer:
        def __init__(self, values, counts):
            self._max_length = 1000000
            self._log_history = np.array(values)
            self._count_history = np.array(counts)

    HistoryBuffer.__module__, HistoryBuffer.__qualname__ = module.__name__, "HistoryBuffer"
    module.HistoryBuffer = HistoryBuffer
    return module


def test_an_mmengine_checkpoint_is_read_and_recognised(tmp_path, monkeypatch):
    module = _history_buffer_class()
    for name in ("mmengine", "mmengine.logging", module.__name__):
        monkeypatch.setitem(sys.modules, name, module if name == module.__name__ else types.ModuleType(name))
    model = EncoderDecoder(depth=50, num_classes=3, plus=False, aux=True)
    path = tmp_path / "iter_80000.pth"
    torch.save({
        "meta": {"dataset_meta": {"classes": ("road", "car", "sky"), "palette": [[1, 2, 3]] * 3},
                 "mmengine_version": "0.10.7", "seed": np.int64(0), "iter": 80000, "cfg": "model = dict(...)"},
        "state_dict": model.state_dict(),
        "message_hub": {"log_scalars": {"train/loss": module.HistoryBuffer([0.5, 0.25], [1, 1])},
                        "runtime_info": {"iter": np.int64(80000), "lr": np.float64(0.01), "max_iters": 80000},
                        "resumed_keys": {"iter": True}},
        "optimizer": {"state": {}, "param_groups": [{"lr": np.float32(0.01), "params": [0, 1]}]},
    }, path)
    monkeypatch.undo()  # what a machine without mmengine sees
    assert "mmengine" not in sys.modules

    with pytest.raises(UnsafeFileError, match="refusing to load"):
        safe_load(path)
    loaded = load_foreign(path, what="mmsegmentation checkpoint")
    buffer = loaded["message_hub"]["log_scalars"]["train/loss"]
    assert isinstance(buffer, Inert) and buffer.qualified_name == "mmengine.logging.history_buffer.HistoryBuffer"
    assert np.array_equal(buffer.state["_log_history"], [0.5, 0.25])
    info = loaded["message_hub"]["runtime_info"]
    assert info["iter"] == 80000 and isinstance(info["iter"], np.int64) and info["lr"] == 0.01
    assert "mmengine" not in sys.modules  # nothing was imported

    foreign = mmseg.recognise(loaded)
    assert foreign.layout == "mmsegmentation DeepLabV3 R50-D8 (with auxiliary_head)"
    assert foreign.class_names == ["road", "car", "sky"]
    assert all(torch.equal(value, model.state_dict()[key]) for key, value in loaded["state_dict"].items())
    # the commands' loaders read it the same way: the whole model, its class names, nothing imported
    ours, report = model_from_file(path)
    assert report.layout == foreign.layout and len(report.loaded) == len(ours.state_dict())
    as_checkpoint = load_trained(path)
    assert as_checkpoint["class_names"] == ["road", "car", "sky"] and as_checkpoint["class_names_recorded"]
    assert "mmengine" not in sys.modules


def test_a_foreign_file_that_is_no_torch_file_is_one_line(tmp_path):
    path = tmp_path / "page.pth"
    path.write_text("<html>not found</html>")
    with pytest.raises(UnsafeFileError, match="is an HTML or XML page"):
        load_foreign(path)
    path.write_bytes(b"PK\x03\x04" + b"\0" * 40)
    with pytest.raises(UnsafeFileError, match="truncated or corrupt|zip archive"):
        load_foreign(path)
