"""The run config: every number checked on the value the user wrote, typos named with a suggestion."""
import pytest

from enformer_train.cli import main
from enformer_train.config import load_config
from enformer_train.errors import UserError

STORES = ["data.stores.human=stores/human"]


@pytest.mark.parametrize("override, message", [
    ("train.steps=-5", "train.steps=-5: must be a whole number of at least 1"),
    ("train.steps=2.5", "train.steps=2.5: must be a whole number"),
    ("train.steps=abc", "train.steps=abc: must be a whole number"),
    ("train.steps=true", "train.steps=True: must be a whole number, not true/false"),
    ("train.batch_size=-1", "train.batch_size=-1: must be a whole number of at least 1"),
    ("train.batch_size=0", "train.batch_size=0: must be a whole number of at least 1"),
    ("train.batch_per_rank=0", "train.batch_per_rank=0: must be a whole number of at least 1"),
    ("train.learning_rate=0", "train.learning_rate=0: must be greater than 0"),
    ("train.learning_rate=-1e-4", "train.learning_rate=-1e-4: must be greater than 0"),
    ("train.eval_every=0", "train.eval_every=0: must be a whole number of at least 1"),
    ("train.clip_grad_norm=-0.2", "train.clip_grad_norm=-0.2: must be a number of at least 0.0"),
    ("train.learning_rate=.nan", "train.learning_rate=nan: must be a finite number"),
    ("data.num_workers=-1", "data.num_workers=-1: must be a whole number of at least 0"),
    ("model.channels=0", "model.channels=0: must be a whole number of at least 2"),
    ("model.heads={human: -3}", "model.heads.human=-3: a head's track count must be a whole number of at least 1"),
    ("train.compile=maybe", "train.compile='maybe': must be true or false"),
])
def test_numbers_are_checked_naming_the_value(override, message):
    with pytest.raises(UserError) as e:
        load_config(None, [*STORES, override])
    assert message in str(e.value), str(e.value)


def test_whole_floats_are_taken_as_counts():
    config = load_config(None, [*STORES, "train.steps=1e3", "train.batch_size=8.0"])
    assert config.train.steps == 1000 and isinstance(config.train.steps, int) and config.train.batch_size == 8


@pytest.mark.parametrize("override, message", [
    ("train.stpes=5", "override 'train.stpes=5': unknown option train.stpes; did you mean train.steps?"),
    ("train.learnig_rate=1e-3", "did you mean train.learning_rate?"),
    ("modle.channels=32", "override 'modle.channels=32': unknown section 'modle'; sections are model, data, train"),
    ("data.store.human=x", "did you mean data.stores?"),
])
def test_override_typos_name_the_override_and_suggest_the_key(tmp_path, capsys, override, message):
    (tmp_path / "c.yaml").write_text("train:\n  steps: 10\n")
    assert main(["train", "--config", str(tmp_path / "c.yaml"), *STORES, override]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "c.yaml" not in err, err


def test_yaml_typos_name_the_file_and_suggest_the_key(tmp_path):
    (tmp_path / "c.yaml").write_text("train:\n  batch_sise: 10\n")
    with pytest.raises(UserError, match=r"c\.yaml \(train\): unknown option\(s\) batch_sise; did you mean train\.batch_size\?"):
        load_config(str(tmp_path / "c.yaml"), STORES)
