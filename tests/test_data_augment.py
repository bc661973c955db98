"""Shift, reverse complement, one-hot on the device: known answers, and the loader applying them."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest_data import store_dir
from enformer_train.data.augment import Augment, FixedView, augment, crop, reverse_complement, reverse_targets
from enformer_train.codes import one_hot
from enformer_train.data.formats.genome import decode, encode
from enformer_train.data.loader import Loader, to_device
from enformer_train.data.store import Store


def test_reverse_complement_known_answer():
    assert decode(reverse_complement(encode("AACGTN"))) == "NACGTT"
    assert decode(reverse_complement(encode("GATTACA"))) == "TGTAATC"
    batch = np.stack([encode("ACGG"), encode("NNTA")])
    assert [decode(r) for r in reverse_complement(batch)] == ["CCGT", "TANN"]
    codes = encode("ACGTTGCANNAC")
    # with the ACGT channel order, the reverse complement of a one-hot is a reversal of both axes
    np.testing.assert_array_equal(one_hot(codes)[::-1, ::-1], one_hot(reverse_complement(codes)))


def test_shift_cuts_from_the_margin():
    window = encode("ACGTACGTAC")  # 10 bases: a 4-base input with a margin of 3 each side
    assert decode(crop(window, 4, 0)) == "TACG"
    assert decode(crop(window, 4, -3)) == "ACGT"
    assert decode(crop(window, 4, 3)) == "GTAC"
    assert decode(crop(window, 4, 1)) == "ACGT"
    with pytest.raises(ValueError, match="shift 4"):
        crop(window, 4, 4)
    with pytest.raises(ValueError, match="cannot centre"):
        crop(window, 5)


def test_reverse_targets_swaps_strand_pairs():
    targets = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float16)  # [positions, tracks]
    np.testing.assert_array_equal(reverse_targets(targets), [[4, 5, 6], [1, 2, 3]])
    np.testing.assert_array_equal(reverse_targets(targets, np.array([0, 2, 1])), [[4, 6, 5], [1, 3, 2]])
    sequence, out = augment(encode("ACGTACGTAC"), targets, 4, shift=1, reverse=True, strand_pair=np.array([0, 2, 1]))
    assert decode(sequence) == "ACGT"[::-1].translate(str.maketrans("ACGT", "TGCA"))  # rc of "ACGT"
    np.testing.assert_array_equal(out, [[4, 6, 5], [1, 3, 2]])


def test_augment_choices_seeded_and_uniform():
    aug = Augment(max_shift=3)
    choices = [aug.choose(7, 0, i) for i in range(4000)]
    assert choices == [aug.choose(7, 0, i) for i in range(4000)]
    assert choices != [aug.choose(8, 0, i) for i in range(4000)]
    assert choices != [aug.choose(7, 1, i) for i in range(4000)]
    shifts = np.array([s for s, _ in choices])
    counts = np.bincount(shifts + 3, minlength=7)
    assert set(shifts) == set(range(-3, 4)) and counts.min() > 4000 / 7 * 0.85
    assert 0.46 < np.mean([r for _, r in choices]) < 0.54
    assert FixedView(2, True).choose(0, 0, 5) == (2, True)


def test_loader_batches_are_augmented_store_samples():
    store = Store(store_dir("human"), "train")
    assert not np.array_equal(store.strand_pair, np.arange(store.num_targets))  # the barnyard has pairs
    loader = Loader(store, 16, train=True, seed=3, sequence_length=4096)
    batch = next(iter(loader))
    assert batch["sequence"].shape == (16, 4096) and batch["sequence"].dtype == torch.uint8
    assert batch["target"].shape == (16, 16, 8) and batch["target"].dtype == torch.float16
    assert batch["reverse_complement"].any() and not batch["reverse_complement"].all()
    assert len(set(batch["shift"].tolist())) > 1
    for j, i in enumerate(batch["index"].tolist()):
        sample = store[i]
        shift, reverse = int(batch["shift"][j]), bool(batch["reverse_complement"][j])
        assert (shift, reverse) == Augment(3).choose(3, 0, i)
        sequence, target = augment(sample["sequence"], sample["target"], 4096, shift, reverse, store.strand_pair)
        np.testing.assert_array_equal(batch["sequence"][j].numpy(), sequence)
        np.testing.assert_array_equal(batch["target"][j].numpy(), target)
    evaluation = next(iter(Loader(store, 4, train=False)))
    assert not evaluation["reverse_complement"].any() and not evaluation["shift"].any()
    np.testing.assert_array_equal(evaluation["sequence"][1].numpy(), store[1]["sequence"][3:-3])


def test_to_device_keeps_codes_and_makes_float_targets():
    """Sequences travel as uint8 codes to the device, where the model one-hots them in its own dtype."""
    batch = {"sequence": torch.from_numpy(np.stack([encode("ACGTN"), encode("TTNAC")])),
             "target": torch.tensor([[[1.5, 2.0]], [[0.25, 3.0]]], dtype=torch.float16),
             "index": torch.tensor([4, 9])}
    out = to_device({"human": batch}, "cpu")["human"]
    assert out["sequence"].dtype == torch.uint8 and out["sequence"].shape == (2, 5)
    np.testing.assert_array_equal(out["sequence"].numpy(), batch["sequence"].numpy())
    assert out["target"].dtype == torch.float32 and out["target"][1, 0, 0].item() == 0.25
    np.testing.assert_array_equal(one_hot(out["sequence"][1].numpy()),
                                  [[0, 0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0]])
