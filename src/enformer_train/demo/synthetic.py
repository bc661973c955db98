"""A synthetic barnyard in Basenji's formats exactly, with targets a model can learn.

    write_barnyard(out, BarnyardConfig.tiny())   # tests: 4,096-bp records, 16 bins of 128 bp
    python -m enformer_train.demo.synthetic OUT --preset demo

writes, for a "human" and a "mouse" genome:

    OUT/human.fa, OUT/human.fa.fai          random genome: N runs at chromosome starts, soft-masked runs
    OUT/human/sequences.bed                 chrom, start, end, split (train/valid/test mixed, file order)
    OUT/human/statistics.json               seq_length, pool_width, crop_bp, target_length, num_targets, *_seqs
    OUT/human/targets.txt                   index, genome, identifier, file, clip, scale, sum_stat, description
    OUT/human/tfrecords/train-0.tfr ...     ZLIB TFRecords, 256 tf.train.Example records a file
    OUT/human/bigwig/targets.txt, *.bw      the human tracks as genome-wide bigWig coverage, for
                                            `prepare --targets` (where pyBigWig is installed)

How targets depend on the sequence (the same for both organisms, with different track mixtures):
- promoter motifs (10-mers, found by scanning the final genome, so chance matches count too) put a
  Gaussian bump (sd one bin) of counts on the tracks that read them;
- stranded tracks come in pairs 'X+' / 'X-' that read a motif only on the + or - strand, so a reverse
  complement swaps them (targets.strand_pairs finds them by the identifiers);
- an enhancer motif within `enhancer_range` bp multiplies a promoter's bump by 1 + enhancer_gain:
  context beyond the bin helps. In the demo preset the range (768 bp, six bins) stays inside the
  1,024-bp flanks of its 6,144-bp records, so a tiny model trained on the records sees every enhancer
  that matters, and about 70% of the promoters have one;
- counts are Poisson around baseline + signal, stored as float16.

The bigWigs hold, per track, Poisson counts drawn for every 128-bp bin of the genome grid (the
same rates as the records), spread evenly over the bin's bases, and no data over each chromosome's
leading N run: sum-pooling a grid-aligned span gives the counts back. They are drawn apart from the
records (own random stream), so the records are the same with or without them.
"""
from __future__ import annotations

import argparse
import json
import os
import re
from dataclasses import asdict, dataclass, field

import numpy as np

from ..codes import one_hot
from ..data.formats.basenji import write_records
from ..data.formats.coverage import BigWigWriter
from ..data.formats.genome import encode

SPLITS = ("train", "valid", "test")
MOTIF_LENGTH = 10
NUM_PROMOTER_MOTIFS = 6
_BASES = np.frombuffer(b"ACGT", dtype=np.uint8)


@dataclass
class BarnyardConfig:
    seq_length: int = 4096
    pool_width: int = 128
    target_length: int = 16
    num_targets: dict = field(default_factory=lambda: {"human": 8, "mouse": 6})
    num_regions: int = 320  # per organism, split train/valid/test
    genome_size: int = 300_000  # bp per organism
    num_chromosomes: int = 3
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    records_per_file: int = 256
    motif_spacing: int = 400  # mean bp between planted motifs
    enhancer_range: int = 1_000  # bp
    enhancer_gain: float = 2.0
    seed: int = 0

    @classmethod
    def tiny(cls, **overrides) -> "BarnyardConfig":
        """Fast tests: 4,096-bp records, 16 bins of 128 bp, 8 human and 6 mouse tracks."""
        return cls(**overrides)

    @classmethod
    def demo(cls, **overrides) -> "BarnyardConfig":
        """The demo: 6,144-bp records, 32 bins of 128 bp (1,024-bp flanks); enhancers act up to 768 bp away.

        Sized for `enformer-train demo`: a tiny Enformer (configs/tiny.yaml) reaches a validation
        Pearson R of 0.72-0.89 (human) and 0.68-0.92 (mouse) in 3-4.5 minutes on two CPU cores
        in the runs measured (benchmarks/RESULTS.md: seeds and CPU kernels).
        """
        values = dict(seq_length=6144, target_length=32, num_targets={"human": 16, "mouse": 8},
                      num_regions=1500, genome_size=4_000_000, motif_spacing=300,
                      enhancer_range=768)
        values.update(overrides)
        return cls(**values)

    @property
    def crop_bp(self) -> int:
        return (self.seq_length - self.target_length * self.pool_width) // 2

    def check(self) -> None:
        span = self.target_length * self.pool_width
        if span > self.seq_length or (self.seq_length - span) % 2:
            raise ValueError("target_length * pool_width must fit centred in seq_length")
        if self.genome_size < 2 * self.num_chromosomes * self.seq_length:
            raise ValueError("genome_size is too small for regions of seq_length")


def motifs() -> tuple[list[str], str]:
    """The promoter motifs and the enhancer motif (fixed: the same for every seed and organism)."""
    rng = np.random.default_rng(20210407)
    found: list[str] = []
    while len(found) < NUM_PROMOTER_MOTIFS + 1:
        motif = _BASES[rng.integers(0, 4, MOTIF_LENGTH)].tobytes().decode()
        rc = motif[::-1].translate(str.maketrans("ACGT", "TGCA"))
        if motif != rc and motif not in found and rc not in found and len(set(motif)) == 4:
            found.append(motif)
    return found[:-1], found[-1]


def _reverse_complement(text: str) -> str:
    return text[::-1].translate(str.maketrans("ACGT", "TGCA"))


@dataclass
class _Track:
    identifier: str
    description: str
    weights: np.ndarray  # over features: promoter (motif, strand) pairs, then the enhancer
    baseline: float


def _tracks(organism: str, count: int, rng: np.random.Generator) -> list[_Track]:
    """Track mixtures: every fourth slot a stranded pair, others unstranded promoter or enhancer tracks."""
    num_features = 2 * NUM_PROMOTER_MOTIFS + 1
    tracks: list[_Track] = []
    slot = 0
    while len(tracks) < count:
        motif = slot % NUM_PROMOTER_MOTIFS
        amplitude = float(rng.uniform(8.0, 20.0))
        baseline = float(rng.uniform(0.5, 2.0))
        if slot % 4 == 1 and count - len(tracks) >= 2:
            stem = f"SYN{organism[0].upper()}{len(tracks):04d}"
            for strand, column in (("+", 2 * motif), ("-", 2 * motif + 1)):
                w = np.zeros(num_features)
                w[column] = amplitude
                tracks.append(_Track(stem + strand, f"CAGE:synthetic motif {motif} {strand} strand", w, baseline))
        else:
            w = np.zeros(num_features)
            if slot % 4 == 3:
                w[-1] = amplitude  # accessibility at enhancers
                w[2 * motif:2 * motif + 2] = 0.5 * amplitude
                kind = "DNASE"
            else:
                w[2 * motif:2 * motif + 2] = amplitude
                second = (motif + 1) % NUM_PROMOTER_MOTIFS
                w[2 * second:2 * second + 2] = 0.4 * amplitude
                kind = "CHIP"
            tracks.append(_Track(f"SYN{organism[0].upper()}{len(tracks):04d}",
                                 f"{kind}:synthetic motif {motif}", w, baseline))
        slot += 1
    return tracks


class _Organism:
    """One synthetic genome, its motif occurrences and its tracks."""

    def __init__(self, name: str, config: BarnyardConfig, seed: int):
        self.name, self.config = name, config
        rng = np.random.default_rng(seed)
        shares = np.linspace(1.4, 0.6, config.num_chromosomes)
        sizes = np.floor(shares / shares.sum() * config.genome_size).astype(int)
        self.chroms = {f"chr{i + 1}": int(s) for i, s in enumerate(sizes)}
        self.sequences: dict[str, np.ndarray] = {}  # ASCII, upper and lower case and N
        promoters, enhancer = motifs()
        for chrom, size in self.chroms.items():
            seq = _BASES[rng.choice(4, size, p=[0.3, 0.2, 0.2, 0.3])].copy()
            plant = rng.integers(0, size - MOTIF_LENGTH, size // config.motif_spacing)
            for pos in plant:
                if rng.random() < 0.25:
                    motif = enhancer
                else:
                    motif = promoters[rng.integers(NUM_PROMOTER_MOTIFS)]
                if rng.random() < 0.5:
                    motif = _reverse_complement(motif)
                seq[pos:pos + MOTIF_LENGTH] = np.frombuffer(motif.encode(), dtype=np.uint8)
            seq[:min(500, size // 20)] = ord("N")  # telomere-like gap: windows here contain N
            for start in rng.integers(0, size - 300, size // 3000):  # soft-masked repeats
                seq[start:start + 300] |= 0x20  # ASCII lower case
            self.sequences[chrom] = seq
        # Occurrences by scanning the final sequence: (centre, motif, strand) per chromosome.
        self.promoters: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.enhancers: dict[str, np.ndarray] = {}
        for chrom, seq in self.sequences.items():
            text = seq.tobytes().decode().upper()
            centres, kinds, strands = [], [], []
            for m, motif in enumerate(promoters):
                for strand, pattern in ((0, motif), (1, _reverse_complement(motif))):
                    hits = [h.start() for h in re.finditer(f"(?={pattern})", text)]
                    centres += [h + MOTIF_LENGTH / 2 for h in hits]
                    kinds += [m] * len(hits)
                    strands += [strand] * len(hits)
            enh = sorted(h.start() + MOTIF_LENGTH / 2 for pattern in (enhancer, _reverse_complement(enhancer))
                         for h in re.finditer(f"(?={pattern})", text))
            self.enhancers[chrom] = np.array(enh, dtype=np.float64)
            centres = np.array(centres, dtype=np.float64)
            self.promoters[chrom] = (centres, np.array(kinds, dtype=np.int64), np.array(strands, dtype=np.int64))
        self.tracks = _tracks(name, config.num_targets[name], rng)
        self.weights = np.stack([t.weights for t in self.tracks])  # [tracks, features]
        self.baselines = np.array([t.baseline for t in self.tracks])

    def _gain(self, chrom: str, centres: np.ndarray) -> np.ndarray:
        enh = self.enhancers[chrom]
        if enh.size == 0 or centres.size == 0:
            return np.ones_like(centres)
        i = np.searchsorted(enh, centres)
        left = np.abs(centres - enh[np.maximum(i - 1, 0)])
        right = np.abs(enh[np.minimum(i, enh.size - 1)] - centres)
        near = np.minimum(left, right) <= self.config.enhancer_range
        return 1.0 + self.config.enhancer_gain * near

    def rates(self, chrom: str, start: int) -> np.ndarray:
        """[target_length, tracks] expected counts for the region starting at `start`."""
        c = self.config
        first = start + c.crop_bp
        bins = first + (np.arange(c.target_length) + 0.5) * c.pool_width
        centres, kinds, strands = self.promoters[chrom]
        reach = 4 * c.pool_width
        keep = (centres > first - reach) & (centres < first + c.target_length * c.pool_width + reach)
        features = np.zeros((c.target_length, 2 * NUM_PROMOTER_MOTIFS + 1))
        if keep.any():
            centre, kind, strand = centres[keep], kinds[keep], strands[keep]
            bump = np.exp(-0.5 * ((bins[:, None] - centre[None, :]) / c.pool_width) ** 2)
            bump *= self._gain(chrom, centre)[None, :]
            np.add.at(features.T, 2 * kind + strand, bump.T)
        enh = self.enhancers[chrom]
        near = enh[(enh > first - reach) & (enh < first + c.target_length * c.pool_width + reach)]
        if near.size:
            features[:, -1] = np.exp(-0.5 * ((bins[:, None] - near[None, :]) / c.pool_width) ** 2).sum(1)
        return self.baselines[None, :] + features @ self.weights.T

    def regions(self, rng: np.random.Generator) -> list[tuple[str, int, int, str]]:
        c = self.config
        names = list(self.chroms)
        lengths = np.array([self.chroms[n] for n in names], dtype=np.float64)
        out = []
        for i in range(c.num_regions):
            if i < len(names):  # one region at each chromosome's start or end: windows run off the end
                chrom = names[i]
                start = 0 if i % 2 == 0 else self.chroms[chrom] - c.seq_length
            else:
                chrom = names[rng.choice(len(names), p=lengths / lengths.sum())]
                start = int(rng.integers(0, self.chroms[chrom] - c.seq_length + 1))
            out.append((chrom, start, start + c.seq_length))
        n_valid = int(round(c.num_regions * c.valid_fraction))
        n_test = int(round(c.num_regions * c.test_fraction))
        splits = np.array(["train"] * (c.num_regions - n_valid - n_test) + ["valid"] * n_valid + ["test"] * n_test)
        rng.shuffle(splits)
        return [(chrom, s, e, str(split)) for (chrom, s, e), split in zip(out, splits)]


def _write_fasta(path: str, sequences: dict[str, np.ndarray], width: int = 60) -> None:
    with open(path, "wb") as f, open(path + ".fai", "w") as fai:
        for chrom, seq in sequences.items():
            header = f">{chrom} synthetic\n".encode()
            f.write(header)
            fai.write(f"{chrom}\t{seq.size}\t{f.tell()}\t{width}\t{width + 1}\n")
            data = seq.tobytes()
            f.write(b"".join(data[i:i + width] + b"\n" for i in range(0, len(data), width)))


def _write_bigwigs(folder: str, organism: _Organism, seed: int) -> str:
    """The organism's tracks as bigWigs of base coverage, and a targets.txt naming them; returns its path."""
    c = organism.config
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    counts = {}  # chrom -> [bins, tracks]
    for chrom, size in organism.chroms.items():
        bins = size // c.pool_width
        rates = np.concatenate([organism.rates(chrom, first - c.crop_bp)
                                for first in range(0, bins * c.pool_width, c.target_length * c.pool_width)])
        counts[chrom] = rng.poisson(rates[:bins])
    for t, track in enumerate(organism.tracks):
        with BigWigWriter(os.path.join(folder, f"{track.identifier}.bw"), list(organism.chroms.items())) as bw:
            for chrom in organism.chroms:
                gap = int(np.argmax(organism.sequences[chrom] != ord("N")))  # no data over the leading N run
                first = -(-gap // c.pool_width)
                bw.steps(chrom, first * c.pool_width, counts[chrom][first:, t] / c.pool_width, c.pool_width)
    path = os.path.join(folder, "targets.txt")
    with open(path, "w") as f:
        f.write("index\tidentifier\tfile\tclip\tclip_soft\tscale\tsum_stat\tdescription\n")
        for i, track in enumerate(organism.tracks):
            f.write(f"{i}\t{track.identifier}\t{track.identifier}.bw\t384\t\t1\tsum\t{track.description}\n")
    return path


def write_barnyard(out: str, config: BarnyardConfig | None = None,
                   organisms: tuple[str, ...] = ("human", "mouse"), bigwigs: bool | None = None
                   ) -> dict[str, dict[str, str]]:
    """Write the barnyard under `out`; returns {organism: {'fasta': path, 'folder': path}} (and
    'targets': the bigWigs' targets.txt for human). `bigwigs`: write the human bigWigs (None: where
    pyBigWig is installed)."""
    if bigwigs is None:
        try:
            import pyBigWig  # noqa: F401

            bigwigs = True
        except ImportError:
            bigwigs = False
    config = config or BarnyardConfig.tiny()
    config.check()
    os.makedirs(out, exist_ok=True)
    written = {}
    for k, name in enumerate(organisms):
        organism = _Organism(name, config, seed=config.seed * 1000 + k)
        rng = np.random.default_rng(config.seed * 1000 + k + 500)
        fasta = os.path.join(out, f"{name}.fa")
        _write_fasta(fasta, organism.sequences)
        folder = os.path.join(out, name)
        os.makedirs(os.path.join(folder, "tfrecords"), exist_ok=True)
        regions = organism.regions(rng)
        with open(os.path.join(folder, "sequences.bed"), "w") as f:
            for chrom, start, end, split in regions:
                f.write(f"{chrom}\t{start}\t{end}\t{split}\n")
        counts = {}
        for split in SPLITS:
            rows = [r for r in regions if r[3] == split]
            counts[split] = len(rows)
            for part in range(max(1, -(-len(rows) // config.records_per_file))):
                chunk = rows[part * config.records_per_file:(part + 1) * config.records_per_file]
                samples = ({"sequence": one_hot(encode(organism.sequences[chrom][start:end].tobytes())),
                            "target": rng.poisson(organism.rates(chrom, start)).astype(np.float16)}
                           for chrom, start, end, _ in chunk)
                write_records(os.path.join(folder, "tfrecords", f"{split}-{part}.tfr"), samples)
        stats = {"num_targets": len(organism.tracks), "seq_length": config.seq_length,
                 "pool_width": config.pool_width, "crop_bp": config.crop_bp,
                 "target_length": config.target_length}
        stats.update({f"{split}_seqs": counts[split] for split in SPLITS})
        with open(os.path.join(folder, "statistics.json"), "w") as f:
            json.dump(stats, f, indent=2)
        with open(os.path.join(folder, "targets.txt"), "w") as f:
            f.write("index\tgenome\tidentifier\tfile\tclip\tscale\tsum_stat\tdescription\n")
            for i, track in enumerate(organism.tracks):
                f.write(f"{i}\t{k}\t{track.identifier}\tsynthetic/{track.identifier}.w5\t384\t1\tsum\t"
                        f"{track.description}\n")
        with open(os.path.join(out, "barnyard.json"), "w") as f:
            json.dump(asdict(config), f, indent=2)
        written[name] = {"fasta": fasta, "folder": folder}
        if bigwigs and name == "human":
            written[name]["targets"] = _write_bigwigs(os.path.join(folder, "bigwig"), organism,
                                                      seed=config.seed * 1000 + k + 900)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a synthetic barnyard in Basenji's formats.")
    parser.add_argument("out")
    parser.add_argument("--preset", choices=["tiny", "demo"], default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    config = getattr(BarnyardConfig, args.preset)(seed=args.seed)
    for name, paths in write_barnyard(args.out, config).items():
        print(f"{name}: {paths['fasta']} {paths['folder']}")


if __name__ == "__main__":
    main()
