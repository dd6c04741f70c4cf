"""Any image size: whole-image inference that would not fit in memory switches to the sliding window (predict.py,
evaluate.py), or stops with one line where it cannot.

"Far larger than the machine can run whole" is made real and fast by running the script under an address-space
limit (``RLIMIT_AS``) a little above what the same command needs on a small image: a 2000x2000 image then needs
about twice the room left for a whole-image forward (today's main dies there in torch's allocator with
``DefaultCPUAllocator: can't allocate memory``), and the sliding window fits. Output stride 32 and windows that
do not overlap keep the compute at one pass over the image.
"""

import resource
import sys

import numpy as np
import pytest
import torch
from helpers import compose_config, run_script, tiny_checkpoint
from PIL import Image

from seg.engine import memory
from seg.engine import predict as predict_module
from seg.engine.evaluation import evaluate_checkpoint
from seg.engine.inference import InferenceOutOfMemory, fit_to_memory, segment
from seg.models import build_model

SIDE = 2000                     # pixels: a whole-image forward of resnet18 needs about 0.5 GB, the windows 0.15 GB
HEADROOM = 320 * 2 ** 20        # bytes of address space above what predict.py needs on a 64 px image
FAST = ["os=32", "inference.window=[500,500]", "inference.stride=[500,500]"]  # 16 windows, no overlap
# Prints the process's peak address space (VmPeak, bytes) when the script it runs exits.
PEAK = ("import atexit, runpy, sys\n"
        "def peak():\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('VmPeak:'):\n"
        "            print('VMPEAK', int(line.split()[1]) * 1024)\n"
        "atexit.register(peak)\n"
        "sys.argv = sys.argv[1:]\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n")

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and sets RLIMIT_AS")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    folder = tmp_path_factory.mktemp("large")
    return tiny_checkpoint(folder / "ckpt.pt", folder / "data", num_classes=3)


def predict(ckpt, source, output, *extra, **kwargs):
    return run_script("predict.py", [f"ckpt={ckpt}", f"input={source}", f"output={output}", "device=cpu",
                                     *FAST, f"hydra.run.dir={output}_run", *extra], **kwargs)


def address_space_limit(ckpt, tmp_path) -> int:
    """What predict.py needs on a 64 px image (its peak address space: torch, the model, the threads), plus
    ``HEADROOM``; that image, which fits, is run whole."""
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "small.png")
    result = predict(ckpt, tmp_path / "small.png", tmp_path / "small", launcher=[sys.executable, "-c", PEAK])
    assert "inference.mode=slide" not in result.stdout + result.stderr  # an image that fits is run whole
    peak = int(result.stdout.split("VMPEAK")[-1].split()[0])
    return peak + HEADROOM


def test_predict_switches_an_image_too_large_for_memory_to_the_sliding_window(ckpt, tmp_path):
    limit = address_space_limit(ckpt, tmp_path)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (SIDE // 8, SIDE // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    Image.fromarray(image).save(tmp_path / "huge.png")

    def limited():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    result = predict(ckpt, tmp_path / "huge.png", tmp_path / "auto", preexec_fn=limited, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    switches = [line for line in result.stdout.splitlines() if "using inference.mode=slide" in line]
    assert len(switches) == 1 and "huge.png" in switches[0] and f"{SIDE}x{SIDE}" in switches[0], result.stdout
    assert "GB" in switches[0] and "free" in switches[0]
    predict_module.predict(compose_config("predict", [f"ckpt={ckpt}", f"input={tmp_path / 'huge.png'}",
                                                      f"output={tmp_path / 'slide'}", "device=cpu", *FAST,
                                                      "inference.mode=slide"]))
    auto = np.array(Image.open(tmp_path / "auto" / "labels" / "huge.png"))
    slide = np.array(Image.open(tmp_path / "slide" / "labels" / "huge.png"))
    assert auto.shape == (SIDE, SIDE) and len(np.unique(slide)) > 1
    np.testing.assert_array_equal(auto, slide)


def test_estimate_is_an_upper_bound_of_the_forward_it_measures():
    """The probe counts every tensor a forward creates: the estimate for a larger image is at least the peak
    counted on that image itself, and the probe's own count grows with the pixels."""
    torch.manual_seed(0)
    model = build_model("resnet18", 3).eval()
    images = torch.zeros(1, 3, 384, 512)
    peak, classes = memory.peak_forward_bytes(model, images)
    assert classes == 3 and peak >= 64 * 192 * 256 * 4  # at least the stem's 64-channel map at half resolution
    assert memory.whole_image_bytes(model, images, (1.0,), torch.float32) >= peak
    assert memory.peak_forward_bytes(model, torch.zeros(1, 3, 768, 1024))[0] > 3 * peak


def test_refuses_in_one_line_where_no_window_fits(monkeypatch):
    torch.manual_seed(0)
    model = build_model("resnet18", 3).eval()
    images = torch.zeros(1, 3, 256, 320)
    options = dict(scales=(1.0,), flip=False, mode="whole", window=None, stride=None, accumulate=torch.float32)
    monkeypatch.setattr(memory, "free_bytes", lambda device: 10 ** 5)
    with pytest.raises(InferenceOutOfMemory, match=r"^photo.png \(256x320\) needs about .* inference.mode=slide "):
        fit_to_memory(model, images, options, "photo.png")
    with pytest.raises(InferenceOutOfMemory, match=r"photo.png \(256x320\) does not fit .* inference.mode=slide"):
        fit_to_memory(model, images, {**options, "window": (64, 64)}, "photo.png")
    monkeypatch.setattr(memory, "free_bytes", lambda device: 5 * 10 ** 6)
    switched = fit_to_memory(model, images, {**options, "window": (64, 64)}, "photo.png")
    assert switched["mode"] == "slide"
    with torch.inference_mode():
        np.testing.assert_array_equal(segment(model, images, **switched).argmax(1),
                                      segment(model, images, **{**options, "mode": "slide", "window": (64, 64)})
                                      .argmax(1))


def test_free_memory_obeys_the_address_space_limit():
    """An RLIMIT_AS set in this process shows in ``free_bytes`` (the limit less the address space in use)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    status = memory._kib_fields(memory.Path("/proc/self/status"))
    limit = status["VmSize"] + 300 * 2 ** 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        free = memory.free_bytes(torch.device("cpu"))
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    assert 250 * 2 ** 20 < free <= 300 * 2 ** 20


def test_evaluate_switches_each_image_that_does_not_fit(tmp_path, monkeypatch, caplog):
    """evaluate.py's loop fits each image as predict does: with (pretended) room for the windows only, every val
    image runs with the sliding window, one warning each naming the image, and the metrics equal an explicit
    ``inference.mode=slide`` evaluation."""
    path = tiny_checkpoint(tmp_path / "ckpt.pt", tmp_path / "data")
    options = [f"ckpt={path}", "device=cpu", "num_workers=0", "inference.window=[32,32]"]
    monkeypatch.setattr(memory, "free_bytes", lambda device: 500_000)  # 64 px: ~1 MB whole, ~0.25 MB windows
    with caplog.at_level("WARNING", logger="seg.inference"):
        auto = evaluate_checkpoint(compose_config("evaluate", options), tmp_path / "auto")
    monkeypatch.undo()
    slide = evaluate_checkpoint(compose_config("evaluate", [*options, "inference.mode=slide"]), tmp_path / "slide")
    assert auto == slide and auto["num_images"] == 3
    switches = [r.getMessage() for r in caplog.records if "using inference.mode=slide" in r.getMessage()]
    assert len(switches) == 3 and all("(64x64)" in line and "window [32, 32]" in line for line in switches)
    assert len({line.split(" (64x64)")[0] for line in switches}) == 3  # each names its own image


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_free_memory_reads_the_cgroup_limit(tmp_path, version):
    """A container's or SLURM job's memory cgroup (here a fake hierarchy: its root): the limit less the usage."""
    folder = tmp_path if version == "v2" else tmp_path / "memory"
    folder.mkdir(exist_ok=True)
    names = ("memory.max", "memory.current") if version == "v2" else ("memory.limit_in_bytes", "memory.usage_in_bytes")
    (folder / names[0]).write_text("1000000000\n")
    (folder / names[1]).write_text("400000000\n")
    assert memory._cgroup_room(tmp_path) == 600_000_000
    (folder / names[0]).write_text("max\n" if version == "v2" else f"{2 ** 63 - 4096}\n")  # no limit
    assert memory._cgroup_room(tmp_path) is None
