"""Everything between the files users download and the batches the trainer consumes, in layers:

    formats/     the files themselves: tfrecord.py (TFRecord framing, CRCs: crc32c.py), basenji.py
                 (Example records, statistics.json), genome.py (FASTA -> uint8 codes), intervals.py
                 (sequences.bed), targets.py (targets.txt, strand pairs), coverage.py (bigWig coverage
                 -> Basenji's targets)
    store.py     the training store: Store (reading), StoreWriter (what producers write with)
    producers/   what makes a store: prepare.py (Basenji records + FASTA), coverage_prepare.py (bigWigs
                 + FASTA + regions), regions.py (tiling a genome, checking a regions BED), pool.py (the
                 worker processes; a dead worker ends the run, naming its task)
    augment.py, loader.py   the runtime: shift / reverse complement, windows; sharded, resumable
                 batches and to_device

A layer imports only the layers above it in this list. The demo's synthetic barnyard is demo/synthetic.py.
Import from the modules themselves; this package exports nothing.
"""
