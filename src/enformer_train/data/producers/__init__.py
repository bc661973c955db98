"""What makes a training store from the files in formats/: Basenji records or bigWigs over a
regions BED, in worker processes (pool.py)."""
