"""Everything between the files users download and the batches the trainer consumes.

    BasenjiRecords   Basenji TFRecords (basenji.py)       Genome      FASTA + .fai (genome.py)
    read_bed         sequences.bed (intervals.py)         prepare     records + FASTA -> store (prepare.py)
    Store            the training store (store.py)        Loader, Paired, to_device   batches (loader.py)
    augment          shift / reverse complement           synthetic   the demo barnyard

Names are imported on first use, so reading records or preparing a store does not import torch.
"""
import importlib

_EXPORTS = {
    "BasenjiRecords": "basenji", "Statistics": "basenji", "read_tfrecords": "basenji", "TFRecordWriter": "basenji",
    "Genome": "genome", "read_bed": "intervals", "Region": "intervals",
    "Store": "store", "Loader": "loader", "Paired": "loader", "to_device": "loader",
    "Augment": "augment", "Fixed": "augment", "strand_pairs": "targets", "read_targets": "targets",
}
_MODULES = {"augment", "basenji", "genome", "intervals", "loader", "store", "synthetic", "targets", "crc32c"}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    if name in _MODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
