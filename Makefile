# Everything a learner or a maintainer needs, from a machine with only Python 3.10+.
#   make lab    create .venv if missing, install minildm, open JupyterLab on notebooks/
#   make test   same set-up, then the whole test suite: tests/ and every notebook (smoke profile)
#   make book   same set-up, then the book: every lesson executed (smoke profile), book/_build/html
PYTHON ?= python3
VENV   ?= .venv
# A laptop gets the default torch wheel for its platform; CI pins the CPU build (see .ci/run).
TORCH  ?= torch>=2.2
PY     := $(VENV)/bin/python
# JupyterLab refuses to start as root (containers, some cloud machines) unless told it may.
LAB_ARGS ?= $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: install lab test student book clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install "$(TORCH)"
	$(PY) -m pip install -e ".[dev,docs]"
	touch $@

install: $(VENV)/.installed

lab: install
	$(VENV)/bin/jupyter lab $(LAB_ARGS) notebooks/

test: install
	MINILDM_PROFILE=smoke MPLBACKEND=Agg $(PY) -m pytest --nbval-lax --nbval-current-env tests notebooks

student: install
	$(VENV)/bin/minildm student notebooks/ --out student/

# Stages notebooks/ into book/lessons/ and builds with warnings as errors (see book/build.py).
book: install
	$(PY) book/build.py

clean:
	rm -rf $(VENV) student book/_build book/lessons .pytest_cache
