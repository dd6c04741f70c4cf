"""No command overwrites what it did not write (``seg.outputs``): every command refuses its own inputs, even with
overwrite=true, and an existing file of another kind unless overwrite=true; its own earlier outputs it may replace.

The headline case of each command runs through its script, as a user runs it; the variations call the same
function the script calls, to keep the file fast.
"""

import json
import os
import runpy
import shutil

import numpy as np
import pytest
import torch
from helpers import REPO, compose_config, needed, run_script, tiny_checkpoint
from PIL import Image

from seg.data.synthetic import write_folder_example
from seg.engine.evaluation import evaluate_checkpoint, write_evaluation
from seg.engine.predict import predict
from seg.export import export_checkpoint
from seg.io import is_torchscript
from seg.outputs import MANIFEST, OutputExists, OutputIsInput, check_outputs, exported_metadata, run_outputs

FAST_EXPORT = ["check.sizes=[[32,32]]"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder as a training leaves it: checkpoints/last.pt and best.pt (two files), metrics.jsonl."""
    root = tmp_path_factory.mktemp("overwrite")
    last = tiny_checkpoint(root / "run" / "checkpoints" / "last.pt", root / "data")
    shutil.copy(last, last.with_name("best.pt"))
    (root / "run" / "metrics.jsonl").write_text('{"iter": 2, "mIoU": 0.25}\n')
    return root / "run"


def contents(*paths):
    return {path: path.read_bytes() for path in paths}


def last_line(result):
    return result.stderr.strip().splitlines()[-1]


def write_image(path, size=(40, 48), seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    return path


# -- export.py -------------------------------------------------------------------------------------------------

def test_export_script_never_writes_over_its_checkpoint(run, tmp_path):
    last = run / "checkpoints" / "last.pt"
    before = contents(last)
    result = run_script("export.py", [f"ckpt={last}", f"output={last}", f"hydra.run.dir={tmp_path / 'h'}"],
                        check=False)  # the command: on the old main it replaced the training with the export
    assert result.returncode == 1, result.stderr[-2000:]
    assert last_line(result) == (f"error: {last} is ckpt={last}, an input of this command: no option (not even "
                                 "overwrite=true) lets a command write over its inputs; choose another output")
    assert contents(last) == before


def test_export_refuses_best_pt_a_dataset_image_and_a_link_to_its_checkpoint(run, tmp_path):
    last, best = run / "checkpoints" / "last.pt", run / "checkpoints" / "best.pt"
    image = write_image(tmp_path / "data" / "images" / "a.png")
    link = tmp_path / "link.pt"
    os.link(last, link)  # the same file under another name (as timm's checkpoint saver keeps best files)
    before = contents(last, best, image)

    def export(ckpt, output, *extra):
        return export_checkpoint(compose_config("export", [f"ckpt={ckpt}", f"output={output}", *FAST_EXPORT, *extra]))

    for output in (best, image):
        with pytest.raises(OutputExists, match=rf"^{output} exists already and is not a model exported by "
                                               r"scripts/export\.py: choose another output, or pass overwrite=true"):
            export(last, output)
    # ckpt=<run folder> means its best.pt: best.pt is then the input
    with pytest.raises(OutputIsInput, match=rf"^{best} is ckpt={best}, an input"):
        export(run, best, "overwrite=true")
    with pytest.raises(OutputIsInput, match=rf"^{link} is the same file as ckpt={last}, an input"):
        export(last, link, "overwrite=true")
    (tmp_path / "symlink.pt").symlink_to(last)
    with pytest.raises(OutputIsInput, match=rf"^{tmp_path / 'symlink.pt'} is ckpt={last}, an input"):
        export(last, tmp_path / "symlink.pt", "overwrite=true")
    with pytest.raises(OutputExists, match=rf"cannot write {last}/model\.ts: {last} is a file, not a folder"):
        export(best, last / "model.ts", "overwrite=true")
    assert contents(last, best, image) == before


def test_export_replaces_its_own_file_and_with_overwrite_a_foreign_one(run, tmp_path):
    notes = tmp_path / "model.ts"
    notes.write_text("my notes\n")
    config = ["ckpt=" + str(run / "checkpoints" / "last.pt"), f"output={notes}", *FAST_EXPORT]
    export_checkpoint(compose_config("export", [*config, "overwrite=true"]))
    assert is_torchscript(notes) and exported_metadata(notes)["num_classes"] == 6
    first = notes.stat().st_mtime_ns
    export_checkpoint(compose_config("export", config))  # an earlier export: no option needed
    assert notes.stat().st_mtime_ns > first
    with pytest.raises(Exception, match="overwrite must be true or false, got 'maybe'"):
        export_checkpoint(compose_config("export", [*config, "overwrite=maybe"]))


def test_an_onnx_file_is_recognised_by_the_metadata_export_writes(tmp_path):
    onnx = needed("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    ours, foreign = tmp_path / "ours.onnx", tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph), str(foreign))
    model = helper.make_model(graph)
    helper.set_model_props(model, {"metadata.json": json.dumps({"seg_version": "1.0", "num_classes": 3})})
    onnx.save(model, str(ours))
    assert exported_metadata(ours) == {"seg_version": "1.0", "num_classes": 3} and exported_metadata(foreign) == {}
    check_outputs([ours], {}, "exported model")
    with pytest.raises(OutputExists, match="foreign.onnx exists already"):
        check_outputs([foreign], {}, "exported model")


# -- predict.py ------------------------------------------------------------------------------------------------

def own_data(root):
    """A user's own data: images/<name>.jpg with their masks in labels/<name>.png (a common layout)."""
    write_image(root / "images" / "a.jpg")
    write_image(root / "images" / "b.jpg", seed=1)
    for name in ("a", "b"):
        (root / "labels").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((40, 48), 1, np.uint8)).save(root / "labels" / f"{name}.png")
    return contents(*sorted(root.rglob("*.*")))


def test_predict_script_keeps_the_masks_beside_the_images(run, tmp_path):
    before = own_data(tmp_path / "data")
    result = run_script("predict.py", [f"ckpt={run}", f"input={tmp_path / 'data' / 'images'}",
                                       f"output={tmp_path / 'data'}", "device=cpu",
                                       f"hydra.run.dir={tmp_path / 'h'}"], check=False)
    assert result.returncode == 1, result.stderr[-2000:]
    mask = tmp_path / "data" / "labels" / "a.png"
    assert last_line(result) == (f"error: {mask} exists already and is not a file scripts/predict.py wrote: choose "
                                 "another output, or pass overwrite=true to replace it")
    assert contents(*sorted((tmp_path / "data").rglob("*.*"))) == before


def test_predict_reruns_into_its_outputs_and_never_writes_over_an_input(run, tmp_path):
    data = tmp_path / "data"
    own_data(data)

    def predict_into(source, output, *extra):
        return predict(compose_config("predict", [f"ckpt={run}", f"input={source}", f"output={output}", "device=cpu",
                                                  *extra]))

    out = tmp_path / "out"
    predict_into(data / "images", out, "probs=true", "probs_npy=true")
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != MANIFEST)
    listed = json.loads((out / MANIFEST).read_text())
    assert written == sorted(listed) and len(written) == 10 and set(listed.values()) == {"predictions"}
    predict_into(data / "images", out)  # a second run replaces its own files
    # the input folder as output: its labels/ are inputs (files inside input=), never replaced
    mask = data / "labels" / "a.png"
    before = contents(mask)
    (data / "labels" / "images").mkdir()
    shutil.copy(mask, data / "labels" / "images" / "a.png")
    with pytest.raises(OutputIsInput, match=rf"^{data / 'labels' / 'images' / 'a.png'} is a file inside input="):
        predict_into(data, data, "overwrite=true")
    with pytest.raises(OutputIsInput, match=rf"^{mask} is input={mask}"):
        predict_into(mask, data, "overwrite=true")
    assert contents(mask) == before
    shutil.rmtree(data / "labels" / "images")
    predict_into(data / "images", data, "overwrite=true")  # foreign, not an input: replaced as asked
    assert np.array(Image.open(mask)).shape == (40, 48) and contents(mask) != before


# -- evaluate.py -----------------------------------------------------------------------------------------------

def test_evaluate_refuses_a_foreign_metrics_json_and_replaces_its_own(run, tmp_path, cfg_eval):
    folder = tmp_path / "eval"
    folder.mkdir()
    (folder / "metrics.json").write_text('{"accuracy": 0.9}\n')
    with pytest.raises(OutputExists, match=rf"^{folder / 'metrics.json'} exists already and is not an output of "
                                           r"scripts/evaluate\.py: choose another hydra\.run\.dir, or pass overwrite"):
        evaluate_checkpoint(cfg_eval(run, "device=cpu"), folder)
    assert (folder / "metrics.json").read_text() == '{"accuracy": 0.9}\n'
    own = tmp_path / "own"
    write_evaluation(own, {"mIoU": 0.5, "per_class_iou": {"a": 0.5}, "num_images": 1}, torch.eye(2, dtype=torch.long),
                     ["a", "b"])
    outputs = [own / name for name in ("metrics.json", "confusion_matrix.csv", "confusion_matrix.png")]
    check_outputs(outputs, {}, "evaluation")  # an earlier evaluation's three files
    shutil.copy(outputs[2], folder / "confusion_matrix.png")
    with pytest.raises(OutputExists, match="confusion_matrix.png exists already"):
        check_outputs([folder / "confusion_matrix.png"], {}, "evaluation")  # beside a foreign metrics.json


# -- train.py --------------------------------------------------------------------------------------------------

def test_a_fresh_training_into_another_runs_folder_stops(run, tmp_path):
    files = [run / "checkpoints" / "last.pt", run / "checkpoints" / "best.pt", run / "metrics.jsonl"]
    before = contents(*files)
    result = run_script("train.py", [f"dataset.root={tmp_path / 'data'}", "device=cpu", f"hydra.run.dir={run}"],
                        check=False)
    assert result.returncode == 1, result.stderr[-2000:]
    assert last_line(result) == (f"error: {files[0]} exists already: choose another hydra.run.dir (or resume=<that "
                                 "run> to continue it), or pass overwrite=true to replace it")
    assert contents(*files) == before and not (run / "checkpoints" / ".last.tmp.pt").exists()
    run_outputs(run, run / "checkpoints" / "last.pt", {}, False)  # resuming that run continues it
    with pytest.raises(OutputExists):
        run_outputs(run, tmp_path / "other" / "checkpoints" / "last.pt", {}, False)  # another run's resume
    with pytest.raises(OutputIsInput, match=r"is a file inside dataset\.root="):
        run_outputs(run, None, {"dataset.root": run}, True)  # a run folder inside the data is never replaced


# -- the dataset tools and example writers ---------------------------------------------------------------------

def test_example_writer_refuses_existing_files_unless_overwrite(tmp_path):
    out = tmp_path / "example"
    mine = write_image(out / "images" / "mine.jpg")
    before = contents(mine)
    result = run_script("make_example_folder.py", [f"out={out}", "num_images=2", "image_size=32"], check=False)
    assert result.returncode == 1
    assert last_line(result) == (f"error: {out / 'images'} exists already: choose another out, or pass "
                                 "overwrite=true to replace it")
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["mine.jpg"]
    write_folder_example(out, num_images=2, image_size=32, overwrite=True)  # what the script calls with overwrite=true
    assert contents(mine) == before and len(list((out / "masks").rglob("*.png"))) == 2  # other names stay


def test_prepare_scripts_name_their_overwrite_option(tmp_path):
    voc = tmp_path / "VOCdevkit" / "VOC2010"
    (voc / "ImageSets" / "SegmentationContext").mkdir(parents=True)
    (voc / "JPEGImages").mkdir()
    listed = voc / "ImageSets" / "SegmentationContext" / "train.txt"
    listed.write_text("mine\n")
    (tmp_path / "trainval_merged.json").write_text("{}")
    result = run_script("prepare_pascal_context.py", ["--json", str(tmp_path / "trainval_merged.json"),
                                                      "--voc", str(tmp_path)], check=False)
    assert result.returncode == 1
    assert last_line(result) == (f"error: {listed} exists already: choose another --voc, or pass --overwrite to "
                                 "replace it")
    assert listed.read_text() == "mine\n"


def test_overwrite_is_no_config_change_of_a_resumed_run():
    """An older run's config has no ``overwrite``; a resume with it set logs no change (it is about the command)."""
    from seg.engine.checkpoint import resume_changes

    saved = {"train": {"lr": 0.1}, "seed": 0}
    assert resume_changes(saved, {**saved, "overwrite": True}, 4) == []
    assert resume_changes(saved, {**saved, "seed": 1}, 4) == ["resume: config changed: seed: 0 -> 1 (applies from "
                                                                "iteration 5 on)"]


def test_receptive_field_png_and_the_benchmark_files_are_recognised(tmp_path, capsys):
    """receptive_field.py png=: its own figure again is fine, another PNG needs overwrite=true; the benchmarks' JSON
    files are recognised by their content."""
    pytest.importorskip("matplotlib")
    main = runpy.run_path(str(REPO / "scripts" / "receptive_field.py"))["main"]
    figure, photo = tmp_path / "rf.png", write_image(tmp_path / "photo.png")
    for _ in range(2):
        main(["layers=[[3,1],[3,2]]", "feature_size=17", f"png={figure}"])
    before = contents(photo)
    with pytest.raises(SystemExit, match=rf"^error: {photo} exists already and is not a figure of "
                                         r"scripts/receptive_field\.py or scripts/make_readme_figure\.py: "
                                         r"choose another png, or pass overwrite=true"):
        main(["layers=[[3,1],[3,2]]", "feature_size=17", f"png={photo}"])
    assert contents(photo) == before
    main(["layers=[[3,1],[3,2]]", "feature_size=17", f"png={photo}", "overwrite=true"])
    check_outputs([photo], {}, "figure")  # now a figure of its own
    (tmp_path / "benchmark.json").write_text(json.dumps({"schema": "seg.benchmark/1", "train": {}}))
    (tmp_path / "models.json").write_text(json.dumps([{"name": "resnet50", "params_m": 1, "gflops": 2, "ratio": 1}]))
    check_outputs([tmp_path / "benchmark.json"], {}, "benchmark")
    check_outputs([tmp_path / "models.json"], {}, "models table")
    with pytest.raises(OutputExists):
        check_outputs([tmp_path / "models.json"], {}, "benchmark")
