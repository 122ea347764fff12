"""Building params for tests: the project's params.yaml with a few keys changed."""

import copy
from pathlib import Path

import yaml

from stages.params import Params, parse_params

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = yaml.safe_load((ROOT / "params.yaml").read_text())

# The two reference runs of the pipeline issue, as overrides of params.yaml (also in the README).
REFERENCE_MODULE = {
    "seed": 5,
    "lr": 0.001,
    "epochs": 50,
    "init.weight": None,
    "init.bias": None,
    "data.n_samples": 50,
    "data.test_fraction": 0,
    "data.x_dist": "linspace",
    "data.x_min": 0,
    "data.x_max": 50,
    "data.weight": 2,
    "data.bias": 1,
    "data.noise_dist": "randint",
    "data.noise_scale": 10,
}
REFERENCE_MANUAL = {
    "seed": 5,
    "lr": 0.1,
    "epochs": 20,
    "init.weight": 16,
    "init.bias": 10,
    "data.n_samples": 1000,
    "data.test_fraction": 0,
    "data.x_dist": "normal",
    "data.x_mean": 0,
    "data.x_std": 1,
    "data.weight": 3,
    "data.bias": 0.5,
    "data.noise_dist": "normal",
    "data.noise_scale": 1,
}


def raw_params(**overrides: object) -> dict:
    """params.yaml as a dict, with dotted keys overridden: raw_params(**{"data.x_std": 2})."""
    raw = copy.deepcopy(DEFAULTS)
    for dotted, value in overrides.items():
        *sections, key = dotted.split(".")
        target = raw
        for section in sections:
            target = target[section]
        target[key] = value
    return raw


def params(**overrides: object) -> Params:
    return parse_params(raw_params(**overrides))
