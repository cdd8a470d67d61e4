# cnnacc: two commands set up a fresh machine. `make demo` runs the main job, `make test` runs the tests.
# The virtual environment is rebuilt only when pyproject.toml changes.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
JOBS   ?= 2

.PHONY: demo test bench doctor clean

demo: $(VENV)/.installed
	$(VENV)/bin/cnnacc demo

test: $(VENV)/.installed-test
	$(PY) -m pytest -n $(JOBS) --durations=10

# Every benchmark, the long ones included: both boards' place-and-route and the full MobileNet v1 224 in RTL
# (hours). One section: `make bench BENCH=compute`; cap the RTL run with CNNACC_BENCH_BUDGET=<seconds>.
BENCH ?= mac_array accuracy compute vector network overlap boards mobilenet_rtl
bench: $(VENV)/.installed-test
	$(PY) -m cnnacc.bench $(BENCH)

doctor: $(VENV)/.installed
	$(VENV)/bin/cnnacc doctor

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.created
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
