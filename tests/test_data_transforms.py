"""Augmentation pipelines, seeded samples (0 vs 2 workers), collation and normalisation."""

import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from seg.data import IMAGENET_MEAN, IMAGENET_STD, MEAN_PIXEL, normalize, pad_collate
from seg.data.transforms import TransformedDataset, eval_transform, train_transform, worker_init_fn


class ArrayDataset:
    """Stand-in for a file dataset: a few random images and masks of various sizes."""

    class_names = ["a", "b", "c"]
    num_classes = 3
    ignore_index = 255
    palette = np.zeros((256, 3), np.uint8)

    def __init__(self, sizes=((40, 56), (64, 48), (30, 30))):
        rng = np.random.default_rng(0)
        self.samples = []
        for height, width in sizes:
            mask = rng.choice(np.array([0, 2, 255], np.uint8), (height, width))
            self.samples.append((rng.integers(0, 256, (height, width, 3), dtype=np.uint8), mask))

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        image, mask = self.samples[index]
        return image.copy(), mask.copy()

    def sample_id(self, index):
        return f"s{index}"


def test_train_sample_shapes_and_values():
    dataset = TransformedDataset(ArrayDataset(), train_transform(32, color_jitter=True))
    assert len(dataset) == 3 and dataset.num_classes == 3 and dataset.sample_id(1) == "s1"
    for index in range(len(dataset)):
        for seed in range(5):
            image, mask = dataset[(index, seed)]
            assert image.dtype == torch.uint8 and image.shape == (3, 32, 32) and image.is_contiguous()
            assert mask.dtype == torch.uint8 and mask.shape == (32, 32)
            # nearest-neighbour only: no value that was not in the mask (255 comes from padding or the mask)
            assert set(mask.unique().tolist()) <= {0, 2, 255}


def test_rectangular_crop_and_padding_with_ignore():
    dataset = TransformedDataset(ArrayDataset([(20, 30)]), train_transform((40, 50), scale_range=None, hflip=False))
    image, mask = dataset[(0, 123)]
    source_image, source_mask = dataset.dataset[0]
    assert image.shape == (3, 40, 50) and mask.shape == (40, 50)
    np.testing.assert_array_equal(mask[:20, :30].numpy(), source_mask)  # the image sits top-left
    np.testing.assert_array_equal(image[:, :20, :30].permute(1, 2, 0).numpy(), source_image)
    assert (mask[20:] == 255).all() and (mask[:, 30:] == 255).all()
    for channel, value in enumerate(MEAN_PIXEL):
        assert (image[channel, 20:] == value).all() and (image[channel, :, 30:] == value).all()


def test_scale_is_one_factor_for_both_sides():
    transform = train_transform(8, scale_range=(0.5, 2.0))
    scale = transform.transforms[0]
    transform.set_random_seed(0)
    for _ in range(20):
        out = scale(image=np.zeros((40, 80, 3), np.uint8), mask=np.zeros((40, 80), np.uint8))
        height, width = out["image"].shape[:2]
        assert out["mask"].shape == (height, width)
        assert 20 <= height <= 80 and abs(width / height - 2) < 0.1


def test_seeded_samples_are_reproducible():
    first = TransformedDataset(ArrayDataset(), train_transform(24))
    a = first[(1, 7)]
    first[(0, 3)], first[2]  # other draws in between change nothing
    b = first[(1, 7)]
    c = TransformedDataset(ArrayDataset(), train_transform(24))[(1, 7)]  # a fresh instance
    for other in (b, c):
        assert torch.equal(a[0], other[0]) and torch.equal(a[1], other[1])
    differs = [not torch.equal(a[0], first[(1, seed)][0]) for seed in range(8, 12)]
    assert any(differs)


class SeededSampler(torch.utils.data.Sampler):
    def __iter__(self):
        return iter([(i % 3, 1000 + i) for i in range(8)])

    def __len__(self):
        return 8


def test_zero_and_two_workers_give_the_same_batches():
    dataset = TransformedDataset(ArrayDataset(), train_transform(24, color_jitter=True))

    def batches(workers):
        loader = DataLoader(dataset, batch_size=4, sampler=SeededSampler(), num_workers=workers,
                            collate_fn=pad_collate, worker_init_fn=worker_init_fn,
                            multiprocessing_context="fork" if workers else None)
        return list(loader)

    serial, parallel = batches(0), batches(2)
    assert len(serial) == len(parallel) == 2
    for (i0, m0), (i2, m2) in zip(serial, parallel):
        assert torch.equal(i0, i2) and torch.equal(m0, m2)


def test_eval_transform_is_identity():
    dataset = TransformedDataset(ArrayDataset(), eval_transform())
    image, mask = dataset[1]
    source_image, source_mask = dataset.dataset[1]
    np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), source_image)
    np.testing.assert_array_equal(mask.numpy(), source_mask)
    assert TransformedDataset(ArrayDataset()).transform is not None


def test_pad_collate():
    dataset = TransformedDataset(ArrayDataset(), eval_transform())
    images, masks = pad_collate([dataset[0], dataset[1]])  # 40x56 and 64x48
    assert images.shape == (2, 3, 64, 56) and masks.shape == (2, 64, 56)
    assert images.dtype == torch.uint8 and masks.dtype == torch.uint8
    assert torch.equal(images[0, :, :40, :56], dataset[0][0]) and torch.equal(masks[1, :, :48], dataset[1][1])
    assert (masks[0, 40:] == 255).all() and (masks[1, :, 48:] == 255).all()
    assert images[0, :, 40:].flatten(1).unique(dim=1).t().tolist() == [list(MEAN_PIXEL)]
    same = pad_collate([dataset[2], dataset[2]])
    assert same[0].shape == (2, 3, 30, 30) and torch.equal(same[0][0], same[0][1])


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_normalize(dtype):
    images = torch.randint(0, 256, (2, 3, 5, 7)).to(dtype)
    out = normalize(images)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, (images.float() / 255 - mean) / std)
    channels_last = normalize(images.contiguous(memory_format=torch.channels_last))
    assert channels_last.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(channels_last, out)


def test_worker_init_fn_seeds_from_torch():
    torch.manual_seed(1234)
    worker_init_fn(0)
    first = (np.random.rand(), random.random())
    torch.manual_seed(1234)
    worker_init_fn(0)
    assert (np.random.rand(), random.random()) == first
    torch.manual_seed(1235)
    worker_init_fn(0)
    assert np.random.rand() != first[0]
