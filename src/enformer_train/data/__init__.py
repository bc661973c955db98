"""Everything between the files users download and the batches the trainer consumes.

    tfrecord.py    TFRecord framing, CRCs, compression      basenji.py     Example records, statistics.json, folders
    genome.py      FASTA + .fai -> uint8 codes              intervals.py   sequences.bed
    targets.py     targets.txt, strand pairs                 store.py       the training store: Store, StoreWriter
    prepare.py     records + FASTA -> store                  augment.py     shift / reverse complement, windows
    loader.py      sharded, resumable batches; to_device     synthetic.py   the demo barnyard
    coverage.py    bigWig coverage -> Basenji's targets      regions.py     tiling a genome, checking a regions BED
    coverage_prepare.py   bigWigs + FASTA + regions -> store
    pool.py        the producers' worker processes (a dead worker ends the run, naming its task)

Import from the modules themselves; this package exports nothing.
"""
