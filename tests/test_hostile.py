"""Hostile inputs at full size, through real processes (issue 13): a model file holding a 1 GiB
storage is refused before it costs memory, and the split handles 1e10 rows."""

import collections
import itertools
import math
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from stages.generate import generate, hypergeometric, hypergeometric_by_inversion, split_counts
from stages.model import save_parameters
from tests.conftest import ENV, ROOT
from tests.helpers import params

GIB = 1 << 30

# Loads model files in a fresh process; prints the result or the error for each, then the
# process's peak resident memory in KiB (Linux's unit for ru_maxrss).
LOAD = """
import resource, sys
from stages.cli import UserError
from stages.model import load_parameters
for path in sys.argv[1:]:
    try:
        print(load_parameters(path))
    except UserError as error:
        print(error)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def load_in_a_process(*paths) -> tuple[list[str], int]:
    """What load_parameters says about each path, and the peak memory in bytes of doing it."""
    result = subprocess.run(
        [sys.executable, "-c", LOAD, *map(str, paths)],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    *said, peak_kib = result.stdout.strip().splitlines()
    return said, int(peak_kib) * 1024


@pytest.fixture(scope="module")
def gib_view(tmp_path_factory):
    """The issue's two files: a (1, 1) weight that is a view of a 1 GiB storage, as torch.save
    writes it, and the same archive recompressed (its storage entry deflated to a few MB)."""
    folder = tmp_path_factory.mktemp("gib")
    view, recompressed = folder / "view.pt", folder / "recompressed.pt"
    storage = torch.empty(GIB // 4)  # never touched: address space, not memory
    state = {"linear.weight": storage[:1].view(1, 1), "linear.bias": torch.zeros(1)}
    # skip_data: torch.save writes the archive with room for every storage, 1 GiB included,
    # but leaves the bytes unwritten, so the file is sparse on disk and reads back as zeros.
    with torch.serialization.skip_data():
        torch.save(state, view)
    with (
        zipfile.ZipFile(view) as source,
        zipfile.ZipFile(recompressed, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as target,
    ):
        for info in source.infolist():
            with target.open(info.filename, "w", force_zip64=True) as entry:
                if "/data/" in info.filename:  # the storages: zeros, as the holes read
                    for start in range(0, info.file_size, 1 << 20):
                        entry.write(bytes(min(1 << 20, info.file_size - start)))
                else:
                    entry.write(source.read(info))
    return view, recompressed


def test_the_issues_files_hold_a_gib_storage_for_a_one_number_weight(gib_view):
    view, recompressed = gib_view
    for path in gib_view:
        sizes = {i.filename: i.file_size for i in zipfile.ZipFile(path).infolist()}
        assert sizes["view/data/0"] == GIB
    assert view.stat().st_size > GIB and recompressed.stat().st_size < 8 << 20


def test_a_gib_storage_is_refused_before_it_costs_memory(tmp_path, gib_view):
    honest = tmp_path / "honest.pt"
    save_parameters(honest, 2.0, 0.5)
    said, baseline = load_in_a_process(honest)
    assert said == ["(2.0, 0.5)"]
    said, peak = load_in_a_process(*gib_view)
    for path, message in zip(gib_view, said, strict=True):
        assert message.startswith(f"{path}: refused: the file is ") and "bytes" in message
    # Loading either storage would add 1 GiB; refusing both costs what loading 2 KB costs
    # (torch's import is most of both).
    assert peak < baseline + 64 * 1024 * 1024, (said, peak, baseline)


# The split at the scale-out work's 10^10 rows, without writing them.


def test_numpy_alone_cannot_split_ten_billion_rows():
    # Why generate has a sampler of its own beyond 10^9 (the issue: n ≈ 1.25e9 crashed).
    with pytest.raises(ValueError, match="less than 1000000000"):
        np.random.default_rng(0).hypergeometric(2 * 10**9, 8 * 10**9, 1 << 20)


def test_the_split_switches_samplers_exactly_at_numpys_limit():
    # numpy refuses 10^9 good or bad items, not only more: a chunk that finds exactly 10^9 test
    # rows (or train rows) still to place must get the inversion sampler, or the run crashes.
    for good, bad in [(10**9, 5), (5, 10**9)]:
        k = hypergeometric(np.random.default_rng(0), good, bad, 10)
        assert max(0, 10 - bad) <= k <= min(10, good)
    # One below, numpy's own sampler is kept, draw for draw: smaller runs keep their bytes.
    limit = 10**9 - 1
    ours = hypergeometric(np.random.default_rng(1), limit, limit, 1000)
    assert ours == np.random.default_rng(1).hypergeometric(limit, limit, 1000)


def test_ten_billion_rows_are_generated_chunk_by_chunk():
    data = params(**{"data.n_samples": 1e10}).data  # test_fraction 0.2
    chunks = itertools.islice(generate(data, seed=0), 3)
    sd = math.sqrt((1 << 20) * 0.2 * 0.8)
    for x, y, is_test in chunks:
        assert len(x) == len(y) == len(is_test) == 1 << 20
        assert np.isfinite(x).all() and np.isfinite(y).all()
        assert abs(is_test.sum() - 0.2 * (1 << 20)) < 6 * sd


@pytest.mark.parametrize(
    ("n", "digits"),
    [(10**10, "2"), (10**10 + 7, "5"), (10**10, "123456789"), (3 * 10**9 + 1, "999999")],
)
def test_a_full_pass_over_ten_billion_rows_places_exactly_the_test_rows(n, digits):
    chunk = 1 << 24
    # n · 0.<digits>, rounded half up, in integers.
    n_test = (2 * n * int(digits) + 10 ** len(digits)) // (2 * 10 ** len(digits))
    counts = np.array(list(split_counts(np.random.default_rng(3), n, n_test, chunk)))
    sizes = np.diff(np.append(np.arange(0, n, chunk), n))
    assert counts.sum() == n_test
    assert (counts >= 0).all() and (counts <= sizes).all()
    # Each count, given the test rows still to place among the rows still to come, is
    # hypergeometric: standardised by that mean and variance, the counts look like N(0, 1).
    rows_left = n - np.concatenate([[0], np.cumsum(sizes)[:-1]])
    tests_left = n_test - np.concatenate([[0], np.cumsum(counts)[:-1]])
    p = tests_left / rows_left
    variance = sizes * p * (1 - p) * (rows_left - sizes) / np.maximum(rows_left - 1, 1)
    inner = variance > 0  # the last chunk has no choice
    z = (counts - sizes * p)[inner] / np.sqrt(variance[inner])
    assert abs(z.mean()) < 0.25 and 0.75 < z.var() < 1.3


def exact_pmf(good: int, bad: int, sample: int) -> dict[int, float]:
    """P(k) = C(good, k) C(bad, sample - k) / C(good + bad, sample), in exact integers."""
    total = math.comb(good + bad, sample)
    support = range(max(0, sample - bad), min(sample, good) + 1)
    return {k: math.comb(good, k) * math.comb(bad, sample - k) / total for k in support}


def lgamma_pmf(good: int, bad: int, sample: int, ks: np.ndarray) -> np.ndarray:
    """The same through log-gamma, for populations whose binomials have millions of digits."""

    def log_comb(n, k):
        return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)

    log_total = log_comb(good + bad, sample)
    return np.array(
        [math.exp(log_comb(good, k) + log_comb(bad, sample - k) - log_total) for k in ks]
    )


def chi_square(draws: np.ndarray, pmf: dict[int, float]) -> tuple[float, int]:
    """Pearson's statistic and its degrees of freedom, neighbouring values merged into bins
    that each expect at least 20 draws."""
    observed, expected, bins = 0, 0.0, []
    counts = collections.Counter(draws.tolist())
    for k, p in sorted(pmf.items()):
        observed, expected = observed + counts.pop(k, 0), expected + p * len(draws)
        if expected >= 20:
            bins.append((observed, expected))
            observed, expected = 0, 0.0
    assert not counts, f"draws outside the support: {counts}"
    last_observed, last_expected = bins.pop()
    bins.append((last_observed + observed, last_expected + expected))
    statistic = sum((o - e) ** 2 / e for o, e in bins)
    return statistic, len(bins) - 1


@pytest.mark.parametrize(
    ("good", "bad", "sample"),
    [
        (30, 50, 25),
        (3, 200, 40),
        (5, 5, 10),
        (1000, 10, 500),
        (400, 600, 999),
        (1, 99, 50),
        (1, 1, 1),  # the smallest population that leaves a choice: a fair coin
    ],
)
def test_the_inversion_sampler_follows_the_exact_distribution(good, bad, sample):
    rng = np.random.default_rng(11)
    draws = np.array([hypergeometric_by_inversion(rng, good, bad, sample) for _ in range(20_000)])
    statistic, df = chi_square(draws, exact_pmf(good, bad, sample))
    # Far beyond the 1e-6 quantile of chi-square: a wrong distribution lands much further.
    assert statistic < df + 10 * math.sqrt(2 * df) + 10, (statistic, df)


def test_the_inversion_sampler_follows_the_distribution_at_ten_billion():
    good, bad, sample = 2 * 10**9, 8 * 10**9, 1 << 20
    rng = np.random.default_rng(12)
    draws = np.array([hypergeometric_by_inversion(rng, good, bad, sample) for _ in range(4000)])
    mean = sample * good / (good + bad)
    ks = np.arange(int(mean) - 3000, int(mean) + 3000)  # ±7 standard deviations
    probabilities = lgamma_pmf(good, bad, sample, ks)
    # The window holds all but 1e-11 of the distribution; lgamma of 10^10 is good to about 1e-5.
    assert abs(probabilities.sum() - 1) < 1e-3
    pmf = dict(zip(ks.tolist(), probabilities / probabilities.sum(), strict=True))
    statistic, df = chi_square(draws, pmf)
    assert statistic < df + 10 * math.sqrt(2 * df) + 10, (statistic, df)


def test_the_inversion_sampler_holds_populations_far_beyond_the_pipelines():
    # The sampler is for populations of any size, beyond the pipeline's 10^12 rows too. Its ratios
    # of neighbouring probabilities multiply counts: about good · bad · sample / total near the
    # mode, 1.7e20 here, past int64's 9.2e18, where integer arithmetic would wrap silently. In
    # float64 the counts stay exact (below 2^53) and the products only round.
    good, bad, sample = 2 * 10**14, 8 * 10**14, 1 << 20
    total = good + bad
    rng = np.random.default_rng(13)
    draws = np.array([hypergeometric_by_inversion(rng, good, bad, sample) for _ in range(2000)])
    # The hypergeometric mean and variance, in closed form.
    mean = sample * good / total
    variance = sample * (good / total) * (bad / total) * (total - sample) / (total - 1)
    # Within 5 standard errors of the mean, and the variance within 20% (6 standard errors).
    assert abs(draws.mean() - mean) < 5 * math.sqrt(variance / len(draws)), draws.mean()
    assert abs(draws.var() / variance - 1) < 0.2, draws.var()
