"""Hostile inputs at full size, through real processes (issue 13): a model file holding a 1 GiB
storage is refused before it costs memory, and the split handles 1e10 rows."""

import subprocess
import sys
import zipfile

import pytest
import torch

from stages.model import save_parameters
from tests.conftest import ENV, ROOT

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
