"""A checkpoint that does not fit: every command that puts a file's tensors into a model (resume, evaluate,
predict, export, model.weights=, backbone.pretrained=) stops with one line naming the file, how many tensors
differ, the first ones with both shapes, and the likely cause with the option that matches it."""

import numpy as np
import pytest
import torch
from helpers import run_script, tiny_checkpoint, tiny_overrides
from PIL import Image
from torchvision.models import resnet34

from seg.config import model_kwargs
from seg.models import build_model
from seg.models.weights import describe_mismatch


def with_tensors_of(path, **architecture):
    """Replace the weights of the checkpoint at ``path`` by those of another architecture (``build_model``
    arguments over the checkpoint's own), keeping its config: a file whose tensors do not fit what it records."""
    state = torch.load(path, weights_only=True)
    torch.manual_seed(0)
    state["model"] = build_model(**{**model_kwargs(state["config"], state["num_classes"]), **architecture}).state_dict()
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fit")
    data = folder / "data"
    made = {
        "classes": with_tensors_of(tiny_checkpoint(folder / "classes.pt", data), num_classes=3),
        "head": with_tensors_of(tiny_checkpoint(folder / "head.pt", data), head="deeplabv3plus"),
        "backbone": with_tensors_of(tiny_checkpoint(folder / "backbone.pt", data), backbone="resnet34"),
        "plus": tiny_checkpoint(folder / "plus.pt", data, **{"model.head": "deeplabv3plus"}),
        "data": data,
    }
    torch.save(resnet34().state_dict(), folder / "resnet34.pth")
    made["resnet34"] = folder / "resnet34.pth"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(folder / "image.png")
    made["image"] = folder / "image.png"
    return made


# (command, file, the arguments, what the message names: the differing tensors with both shapes, the cause)
CASES = {
    "resume": ("train.py", "classes", lambda f, tmp: [*tiny_overrides(f["data"]), f"resume={f['classes']}"],
               ["2 tensors differ", "classifier.weight [3, 256, 1, 1] in the file, [6, 256, 1, 1] in the model",
                "another number of classes (the file has 3: dataset.num_classes=3)"]),
    "evaluate": ("evaluate.py", "head", lambda f, tmp: [f"ckpt={f['head']}", "device=cpu"],
                 ["24 tensors differ", "decoder.reduce.0.weight", "another head (model.head=deeplabv3plus)"]),
    "predict": ("predict.py", "classes", lambda f, tmp: [f"ckpt={f['classes']}", f"input={f['image']}",
                                                         f"output={tmp / 'out'}", "device=cpu"],
                ["classifier.bias [3] in the file, [6] in the model", "dataset.num_classes=3"]),
    "export": ("export.py", "backbone", lambda f, tmp: [f"ckpt={f['backbone']}", f"output={tmp / 'model.ts'}"],
               ["tensors differ", "not in the model (backbone.layer1.2.conv1.weight",
                "another backbone (backbone=resnet34)"]),
    "model.weights": ("train.py", "plus", lambda f, tmp: [*tiny_overrides(f["data"]), f"model.weights={f['plus']}"],
                      ["do not fit this model's decoder", "24 tensors differ", "model.head=deeplabv3plus"]),
    "backbone.pretrained": ("train.py", "resnet34", lambda f, tmp: [*tiny_overrides(f["data"]),
                                                                   f"backbone.pretrained={f['resnet34']}"],
                            ["do not fit resnet18", "another backbone (backbone=resnet34)"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_file_that_does_not_fit_is_one_line_naming_tensors_shapes_and_cause(files, tmp_path, case):
    script, name, arguments, expected = CASES[case]
    result = run_script(script, [*arguments(files, tmp_path), f"hydra.run.dir={tmp_path / 'run'}"], check=False)
    assert result.returncode == 1, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("error: ") and str(files[name]) in lines[0], lines[0]
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert not (tmp_path / "out").exists() and not (tmp_path / "model.ts").exists()


def test_description_names_every_kind_of_difference():
    """Compared with the models built for each architecture: the counts are the differing names and shapes."""
    torch.manual_seed(0)
    own = build_model("resnet18", 6).state_dict()
    for arguments, cause in (({"backbone": "resnet34"}, "another backbone (backbone=resnet34)"),
                             ({"head": "deeplabv3plus"}, "another head (model.head=deeplabv3plus)"),
                             ({"num_classes": 21}, "another number of classes (the file has 21: "
                                                   "dataset.num_classes=21)"),
                             ({"aux_loss": True}, "an auxiliary head (model.aux_loss=true)"),
                             ({"head": "context", "context": "basic"},
                              "another head (model.head=context model.context=basic)"),
                             ({"head": "context", "context": "large"},
                              "another head (model.head=context model.context=large)"),
                             ({"backbone": "unet", "head": "unet_dilated", "multi_grid": None},
                              "another model (model=unet_dilated)")):
        file = build_model(**{"backbone": "resnet18", "num_classes": 6, **arguments}).state_dict()
        differ = len(set(file) ^ set(own)) + sum(file[k].shape != own[k].shape for k in set(file) & set(own))
        text = describe_mismatch(file, own)
        assert text.startswith(f"{differ} tensors differ: ") and text.endswith(f"likely {cause}"), text
    assert describe_mismatch(own, build_model("resnet18", 6).state_dict()) is None
    unet = build_model("unet", 6, head="unet_dilated", multi_grid=None).state_dict()
    assert describe_mismatch(own, unet).endswith("likely another model (backbone=resnet18 model.head=deeplabv3)")
