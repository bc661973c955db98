"""`enformer-train score-variants`: the change an allele makes to every predicted track.

vcf.py reads the VCF (streaming, chromosome names mapped to the FASTA's), windows.py builds the
reference and alternative windows, stats.py turns predictions into scores, genes.py reads a GTF and
scores genes, output.py writes the .h5/.tsv a chunk at a time, command.py plans and runs it.
"""
from .command import ScoreOptions, score_variants

__all__ = ["ScoreOptions", "score_variants"]
