# The two commands of the README. Both install what is missing first (pinned by constraints.txt).
PYTHON ?= python3
WORKDIR ?= runs/quickstart

.PHONY: install quickstart test lint bench reproduce reproduce-quick

# Offline first: when every pinned package is already there (or in a local wheel folder),
# nothing is downloaded or built and jaxquant runs from this source tree; otherwise the
# package and what is missing are installed from the index.
install:
	@$(PYTHON) -m pip install --quiet --disable-pip-version-check --no-index -r constraints.txt 2>/dev/null \
	  || $(PYTHON) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'

quickstart: install
	$(PYTHON) -m jaxquant.main --config configs/quickstart.py --workdir $(WORKDIR)

test: install
	$(PYTHON) -m pytest -q

lint: install
	$(PYTHON) -m ruff check . && $(PYTHON) -m ruff format --check .

bench: install
	$(PYTHON) -m benchmarks.train_step

# The reproduction study (benchmarks/reproduce.py): resumable; extra flags via ARGS="--seeds 5".
reproduce: install
	$(PYTHON) benchmarks/reproduce.py --dataset fashion_mnist $(ARGS)

reproduce-quick: install
	$(PYTHON) benchmarks/reproduce.py --dataset fashion_mnist --quick $(ARGS)
