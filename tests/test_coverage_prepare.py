"""prepare --targets: the barnyard's bigWigs -> a store (the same windows as from its records, targets
computed from the bigWigs), workers, resume, bad inputs with nothing written, and a model trained on it."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

pyBigWig = pytest.importorskip("pyBigWig")

from conftest_data import TINY_SEQUENCE_LENGTH, barnyard_dir, store_dir
from enformer_train.cli import main as cli_main
from enformer_train.data.producers import coverage_prepare
from enformer_train.data.producers.coverage_prepare import prepare_coverage
from enformer_train.data.store import Store
from enformer_train.errors import UserError
from enformer_train.train.metrics_log import read_metrics
from train_helpers import TINY_MODEL, run

SPLITS = ("train", "valid", "test")


def _inputs(root=None):
    root = root or barnyard_dir()
    return dict(fasta=os.path.join(root, "human.fa"), targets=os.path.join(root, "human", "bigwig", "targets.txt"),
                regions=os.path.join(root, "human", "sequences.bed"))


def _prepare(out, root=None, **kw):
    args = dict(sequence_length=TINY_SEQUENCE_LENGTH, target_length=16, max_shift=3, workers=0, chunk=64, progress=False)
    args.update(kw)
    return prepare_coverage(str(out), "human", **_inputs(root), **args)


_STORE: dict = {}


def bigwig_store(tmp_path_factory) -> str:
    if "path" not in _STORE:
        out = tmp_path_factory.mktemp("bigwig-store") / "human"
        _prepare(out)
        _STORE["path"] = str(out)
    return _STORE["path"]


def test_store_has_the_record_stores_windows_and_bigwig_targets(tmp_path_factory):
    path = bigwig_store(tmp_path_factory)
    manifest = json.load(open(os.path.join(path, "manifest.json")))
    assert manifest["complete"] and manifest["num_targets"] == 8 and manifest["target_length"] == 16
    assert manifest["transform"] == "basenji"
    for split in SPLITS:  # same BED, same context: the same sequence windows as from the records
        for suffix in ("sequence.u8", "regions.bed"):
            assert open(os.path.join(path, f"{split}.{suffix}"), "rb").read() == \
                open(os.path.join(store_dir("human"), f"{split}.{suffix}"), "rb").read()
    # targets: sum over each bin of the bigWig's values (clip 384 never reached), NaN gap -> 0
    store = Store(path, "train")
    inputs = _inputs()
    files = [line.split("\t")[2] for line in open(inputs["targets"]).read().splitlines()[1:]]
    bws = [pyBigWig.open(os.path.join(os.path.dirname(inputs["targets"]), f)) for f in files]
    for i, (chrom, start, end, line) in enumerate(store.regions()[:40]):
        t0 = start + 3 + (TINY_SEQUENCE_LENGTH - 16 * 128) // 2
        expected = np.stack([np.nan_to_num(bw.values(chrom, t0, t0 + 2048, numpy=True)).reshape(16, 128).sum(1)
                             for bw in bws], axis=1)
        np.testing.assert_allclose(store[i]["target"].astype(np.float32), expected, rtol=1e-3, err_msg=str(line))
    assert store.read_target(0).any()


def test_two_workers_write_the_same_store(tmp_path, tmp_path_factory):
    _prepare(tmp_path / "s", workers=2, chunk=32)
    reference = bigwig_store(tmp_path_factory)
    for split in SPLITS:
        for suffix in ("sequence.u8", "target.f16"):
            assert open(tmp_path / "s" / f"{split}.{suffix}", "rb").read() == \
                open(os.path.join(reference, f"{split}.{suffix}"), "rb").read()


def test_interrupted_prepare_resumes_to_the_same_store(tmp_path, tmp_path_factory, monkeypatch):
    calls = {"n": 0}
    real = coverage_prepare.region_targets

    def interrupted(*args, **kw):
        calls["n"] += 1
        if calls["n"] > 100:  # chunks of 64 (32 for valid and test): some written, not all
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(coverage_prepare, "region_targets", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _prepare(tmp_path / "s")
    with pytest.raises(UserError, match="incomplete"):
        Store(str(tmp_path / "s"), "train")
    monkeypatch.setattr(coverage_prepare, "region_targets", real)
    manifest = _prepare(tmp_path / "s")
    done = manifest["prepare"]["chunks_from_earlier_runs"]
    assert 1 <= done and done + manifest["prepare"]["chunks_written"] == 6  # train 4 chunks, valid 1, test 1
    reference = bigwig_store(tmp_path_factory)
    for split in SPLITS:
        assert open(tmp_path / "s" / f"{split}.target.f16", "rb").read() == \
            open(os.path.join(reference, f"{split}.target.f16"), "rb").read()
    assert _prepare(tmp_path / "s")["prepare"]["chunks_from_earlier_runs"] == done  # complete: nothing to do


def test_bad_inputs_write_nothing(tmp_path):
    root = tmp_path / "b"
    shutil.copytree(barnyard_dir(), root, ignore=shutil.ignore_patterns("tfrecords", "mouse*"))
    targets = root / "human" / "bigwig" / "targets.txt"
    text = targets.read_text()
    cases = []
    targets.write_text(text.replace("SYNH0003.bw", "missing.bw"))
    cases.append(r"targets.txt, line 5: bigWig .*missing.bw does not exist")
    with pytest.raises(UserError, match=cases[-1]):
        _prepare(tmp_path / "out", root)
    (root / "human" / "bigwig" / "missing.bw").write_text("not a bigWig")
    with pytest.raises(UserError, match=r"targets.txt, line 5: cannot read .*missing.bw as a bigWig"):
        _prepare(tmp_path / "out", root)
    targets.write_text(text.replace("\tsum\t", "\tmode\t", 1))
    with pytest.raises(UserError, match=r"targets.txt, line 2: unknown sum_stat 'mode'"):
        _prepare(tmp_path / "out", root)
    targets.write_text(text)
    bed = root / "human" / "sequences.bed"
    rows = bed.read_text().splitlines()
    bed.write_text("\n".join(rows[:5] + [rows[5].replace("chr1", "1").replace("chr2", "1").replace("chr3", "1")]
                             + rows[6:]) + "\n")
    with pytest.raises(UserError, match=r"sequences.bed, line 6: chromosome '1' is not in the genome"):
        _prepare(tmp_path / "out", root)
    assert not os.path.exists(tmp_path / "out")


def test_chromosome_naming_mismatch_is_named(tmp_path):
    folder = tmp_path / "bw"
    folder.mkdir()
    bw = pyBigWig.open(str(folder / "one.bw"), "w")
    bw.addHeader([("1", 140000), ("2", 100000), ("3", 59999)])
    bw.addEntries("1", 0, values=[1.0] * 10, span=128, step=128)
    bw.close()
    (folder / "targets.txt").write_text("index\tidentifier\tfile\tclip\tscale\tsum_stat\tdescription\n"
                                        "0\tX\tone.bw\t\t\tsum\tDNASE:x\n")
    inputs = _inputs()
    with pytest.raises(UserError, match=r"targets.txt, line 2: bigWig .*one.bw has no chromosome 'chr\d' \(used by "
                                        r".*sequences.bed, line \d+\); it names chromosomes like '\d'.*chr1 vs 1 naming"):
        prepare_coverage(str(tmp_path / "out"), "human", inputs["fasta"], str(folder / "targets.txt"),
                         inputs["regions"], sequence_length=TINY_SEQUENCE_LENGTH, target_length=16, workers=0, progress=False)
    assert not os.path.exists(tmp_path / "out")


def test_prepare_command_with_targets(tmp_path, capsys):
    inputs = _inputs()
    common = ["prepare", "--organism", "human", "--fasta", inputs["fasta"], "--out", str(tmp_path / "s"),
              "--context", str(TINY_SEQUENCE_LENGTH), "--target-length", "16", "--workers", "0", "--no-progress"]
    with pytest.raises(SystemExit):
        cli_main(common + ["--targets", inputs["targets"], "--basenji", barnyard_dir()])
    assert "not allowed with argument" in capsys.readouterr().err
    assert cli_main(common + ["--targets", inputs["targets"]]) == 1
    assert "--targets needs --regions" in capsys.readouterr().err
    assert cli_main(common + ["--targets", inputs["targets"], "--regions", inputs["regions"],
                              "--transform", "baskerville"]) == 0
    assert "human store complete (train 256, valid 32, test 32" in capsys.readouterr().out
    assert json.load(open(tmp_path / "s" / "manifest.json"))["transform"] == "baskerville"


@pytest.mark.slow
def test_a_model_trains_on_the_bigwig_store(tmp_path, tmp_path_factory):
    store = bigwig_store(tmp_path_factory)
    model = [a for a in TINY_MODEL if not a.startswith("model.heads")] + ["model.heads={human: 8}"]
    run(1, [f"data.stores={{human: {store}}}", "data.num_workers=0", *model, "train.steps=6", "train.batch_size=4",
            "train.warmup_steps=2", "train.log_every=1", "train.eval_every=6", "train.eval_batches=2",
            f"train.run_dir={tmp_path / 'run'}", "train.learning_rate=0.001", "train.tensorboard=false"])
    metrics = read_metrics(tmp_path / "run")
    losses = [m["loss/human"] for m in metrics if "loss/human" in m]
    assert len(losses) == 6 and all(np.isfinite(losses))
    assert any("valid/human/pearson_r" in m for m in metrics)
    assert os.path.exists(tmp_path / "run" / "model.safetensors")
