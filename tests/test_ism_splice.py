"""ISM that recomputes only the convolution tower's positions a mutation reaches (attribute's
_TowerSplice): the tower's reach as the layers define it, and the same scores as recomputing the
whole window for every mutation (float64: bit for bit)."""
import numpy as np
import pytest
import torch

from enformer_train.attribute import Target, _TowerSplice, ism
from enformer_train.model.enformer import build_model
from model_helpers import randomise_, tiny_config

LENGTH = 8192  # 64 tower positions: a mutation reaches 6 of them


def _model(dtype=torch.float64):
    torch.manual_seed(0)
    model = build_model(tiny_config(sequence_length=LENGTH, target_length=32)).eval()
    randomise_(model)
    with torch.no_grad():  # sharper batch norms: a base moves the outputs by more than float32 round-off
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.mul_(0.5)
    return model.to(dtype)


def test_the_towers_reach_is_what_the_layers_read():
    model = _model()
    first, last = model.tower_reach()
    assert (first, last) == (-259, 386)  # stem: 15 wide; 6 tower blocks of 5, each after a pooling of pairs
    codes = torch.as_tensor(np.random.default_rng(1).integers(0, 4, LENGTH), dtype=torch.uint8)
    with torch.no_grad():
        reference = model.tower(codes[None])[0]
        for p in (0, 1, 127, 128, 3000, 3001, LENGTH - 1):
            mutated = codes.clone()
            mutated[p] = (mutated[p] + 1) % 4
            changed = ((model.tower(mutated[None])[0] - reference).abs().amax(0) > 0).nonzero().flatten().tolist()
            reached = [j for j in range(LENGTH // 128) if 128 * j + first <= p <= 128 * j + last]
            # every position that changed is within reach, and the reach's two ends do change
            assert set(changed) <= set(reached), p
            assert changed[0] == reached[0] and changed[-1] == reached[-1], p


@pytest.mark.parametrize("span,rc", [((95, 107), False), ((4006, 4014), True), ((LENGTH - 10, LENGTH), True),
                                     ((0, 8), False)], ids=["left", "middle-rc", "right-end-rc", "left-end"])
def test_spliced_ism_equals_whole_window_ism_bit_for_bit_in_float64(span, rc):
    model = _model()
    codes = np.random.default_rng(0).integers(0, 4, LENGTH).astype(np.uint8)
    codes[[100, 4010, LENGTH - 3]] = 4  # N positions are skipped either way
    target = Target(bins=[15, 16, 17], tracks=[0, 2], per_track=True)
    pair = torch.tensor([1, 0, 2, 3, 4])  # tracks 0 and 1 a strand pair
    assert _TowerSplice(model, torch.as_tensor(codes), "human", False).useful
    whole = ism(model, codes, span, "human", target, batch_size=7, rc=rc, strand_pair=pair, whole=True)
    spliced = ism(model, codes, span, "human", target, batch_size=7, rc=rc, strand_pair=pair)
    np.testing.assert_array_equal(spliced[0], whole[0])
    np.testing.assert_array_equal(spliced[1], whole[1])
    assert spliced[2] == whole[2] == (1 if span != (0, 8) else 0)
    assert np.isfinite(whole[0]).sum() > 0 and np.abs(np.nan_to_num(whole[0])).max() > 0


def test_spliced_ism_in_float32_is_within_round_off_of_the_target():
    """float32: the stretch's convolutions round differently from the whole window's (other lengths,
    other blocking): within 1e-5 of the target's size, as a different batch size rounds too."""
    model = _model(torch.float32)
    codes = np.random.default_rng(0).integers(0, 4, LENGTH).astype(np.uint8)
    target = Target(bins=[15, 16, 17], tracks=[0, 1, 2, 3, 4])
    span = (4100, 4116)  # under the target's bins: the tower's own reach carries the change
    whole = ism(model, codes, span, "human", target, batch_size=8, whole=True)
    spliced = ism(model, codes, span, "human", target, batch_size=8)
    assert np.abs(spliced[0] - whole[0]).max() <= 1e-5 * abs(whole[1])
    assert np.abs(whole[0]).max() > 1e-3 * abs(whole[1])  # the mutations move the target by more than that


def test_a_window_shorter_than_the_reach_recomputes_whole():
    torch.manual_seed(0)
    model = build_model(tiny_config()).eval()  # 1,024 bp: 8 positions, fewer than one stretch
    codes = torch.as_tensor(np.random.default_rng(0).integers(0, 4, 1024), dtype=torch.uint8)
    assert not _TowerSplice(model, codes, "human", False).useful
