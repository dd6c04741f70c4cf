"""A misspelt command-line key is one line naming it and the keys it is close to (``seg.overrides``), before Hydra
would advise ``+key=value``; every valid form of override is left to Hydra."""

import re

import pytest
from helpers import REPO, run_script

from seg.overrides import unknown_key

CONFIGS = REPO / "configs"


@pytest.mark.parametrize("overrides, key, suggestion", [
    (["backbne=resnet50"], "backbne", "backbone"),
    (["backbone=resnet50", "train.lrr=0.01"], "train.lrr", "train.lr"),
    (["dataset=voc", "dataset.rooot=/data/VOC"], "dataset.rooot", "dataset.root"),  # a key of the chosen dataset
    (["model.heed=deeplabv3plus"], "model.heed", "model.head"),
])
def test_a_misspelt_key_names_the_key_it_is_close_to(overrides, key, suggestion):
    message = unknown_key(CONFIGS, "train", overrides)
    assert message.startswith(f"unknown key {key!r} in ") and f"did you mean {suggestion}" in message, message
    assert message.endswith(f"+{key}=... adds a key the config does not have") and "\n" not in message


@pytest.mark.parametrize("overrides", [
    [], ["backbone=resnet50", "os=16"], ["dataset=voc", "dataset.root=/data/VOC"], ["hydra.run.dir=/tmp/x"],
    ["+extra_key=1"], ["~train.class_weights"], ["~train.no_such_key"], ["experiment=voc_paper"],
    ["dataset=no_such_dataset"],  # a missing group option: Hydra's own message lists the options
    ["train.lr=0.01,0.02"], ["-m", "train.lr=0.01,0.02"], ["--cfg", "job"],
    ["train.lr=["], ["train.lr"], ["=5"],  # malformed: Hydra's parser error
])
def test_everything_else_is_left_to_hydra(overrides):
    assert unknown_key(CONFIGS, "train", overrides) is None


def test_a_key_far_from_every_key_says_where_to_see_them():
    assert "(see the keys with --cfg job)" in unknown_key(CONFIGS, "evaluate", ["qqqqqq=1"])


@pytest.mark.parametrize("script, key, suggestion", [("train.py", "backbne", "backbone"),
                                                      ("evaluate.py", "tta.flp", "tta.flip"),
                                                      ("benchmark.py", "backendz", "backends")])
def test_scripts_refuse_a_misspelt_key_in_one_line(script, key, suggestion, tmp_path):
    result = run_script(script, [f"{key}=1", f"hydra.run.dir={tmp_path / 'run'}"], check=False)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr[-2000:]
    assert result.stderr.startswith(f"error: unknown key {key!r} in '{key}=1' (did you mean {suggestion}")
    assert not (tmp_path / "run").exists()


def test_every_hydra_script_checks_its_overrides_first():
    for script in sorted((REPO / "scripts").glob("*.py")):
        text = script.read_text()
        name = re.search(r'@hydra\.main\([^)]*config_name="(\w+)"', text)
        if name:
            assert f'check_overrides(__file__, "{name.group(1)}")\n    main()' in text, script.name
