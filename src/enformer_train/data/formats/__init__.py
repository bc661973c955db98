"""The data files as their formats define them: TFRecords and Basenji records, FASTA genomes,
BED intervals, targets.txt, bigWig coverage. Nothing here knows about stores or training."""
