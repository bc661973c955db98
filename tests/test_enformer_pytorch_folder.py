"""An enformer-pytorch / Hugging Face model folder (save_pretrained: config.json + model.safetensors or
pytorch_model.bin) is accepted wherever a model is: load_model, every --checkpoint, train.init_from."""
import os

os.environ.setdefault("USE_TF", "0")  # enformer-pytorch imports transformers, which would import TensorFlow

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from enformer_train import load_model  # noqa: E402
from enformer_train.cli import main  # noqa: E402
from enformer_train.saved import load, resolve_saved  # noqa: E402
from enformer_train.model.convert import from_enformer_pytorch  # noqa: E402
from enformer_train.saved import model_config as source_model_config  # noqa: E402

enformer_pytorch = pytest.importorskip("enformer_pytorch")


def _saved(tmp_path, safe: bool):
    torch.manual_seed(0)
    model = enformer_pytorch.Enformer.from_hparams(dim=48, depth=1, heads=2, output_heads=dict(human=5),
                                                   target_length=8, dim_divisible_by=8)
    folder = tmp_path / ("hf-safetensors" if safe else "hf-bin")
    # enformer-pytorch's save_pretrained writes pytorch_model.bin (its `_trunk` aliases share storage,
    # which transformers' safetensors path refuses); a model.safetensors folder is written as
    # safetensors' save_model writes it, one name per shared tensor
    model.save_pretrained(str(folder), safe_serialization=False)
    if safe:
        from safetensors.torch import save_model

        os.remove(folder / "pytorch_model.bin")
        save_model(model, str(folder / "model.safetensors"))
    assert (folder / "config.json").exists()
    assert (folder / ("model.safetensors" if safe else "pytorch_model.bin")).exists()
    return model, folder


@pytest.mark.parametrize("safe", [True, False])
def test_load_model_converts_a_save_pretrained_folder_in_memory(tmp_path, safe):
    reference, folder = _saved(tmp_path, safe)
    before = sorted(os.listdir(folder))
    model = load_model(folder).eval()
    assert sorted(os.listdir(folder)) == before  # nothing written
    assert model.config.channels == 48 and model.config.heads == {"human": 5} and model.config.target_length == 8
    converted = from_enformer_pytorch(reference.state_dict(), target_length=8).eval()
    for key, value in converted.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    codes = torch.randint(0, 5, (1, 128 * 16), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    with torch.no_grad():
        np.testing.assert_array_equal(model(codes, head="human").numpy(), converted(codes, head="human").numpy())
    assert resolve_saved(folder)[0] == "enformer-pytorch"
    assert load(folder).model.config.heads == {"human": 5}
    assert source_model_config(folder)["channels"] == 48  # train.init_from=FOLDER


def test_predict_takes_the_folder_as_checkpoint(tmp_path):
    _, folder = _saved(tmp_path, True)
    fasta = tmp_path / "g.fa"
    rng = np.random.default_rng(0)
    fasta.write_text(">chr1\n" + "".join(rng.choice(list("ACGT"), size=3000)) + "\n")
    out = tmp_path / "p.npz"
    assert main(["predict", "--checkpoint", str(folder), "--fasta", str(fasta), "--region", "chr1:1000-2024",
                 "--organism", "human", "--out", str(out)]) == 0
    assert np.load(out)["predictions"].shape == (8, 5)
