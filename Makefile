# The two set-up commands of the README: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
# torch and torchvision pinned to the builds that are served from local disk here.
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test bench install clean leaderboards

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e .
	touch $(STAMP)

# The tests also need pytest and the peer libraries the attacks are cross-checked against.
$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[dev,test,ray]'
	touch $(TEST_STAMP)

install: $(STAMP)

# The main job on the embedded default: train (or reuse) the models, run the protocols, render.
demo: $(STAMP)
	$(BIN)/advarena run --defense gda-brelu --output .advarena/results.json
	$(BIN)/advarena leaderboard --out .advarena/leaderboards
	@echo "leaderboards: .advarena/leaderboards/leaderboard.md and leaderboard.html"

# The committed leaderboards/: the default suite with every first-party defense.
leaderboards: $(STAMP)
	$(BIN)/advarena run --store .advarena-all --output leaderboards/results.json $(foreach d,$(shell $(BIN)/advarena list defenses --json | $(BIN)/python -c "import json,sys; print(' '.join(e['name'] for e in json.load(sys.stdin)))"),--defense $(d))
	$(BIN)/advarena leaderboard --store .advarena-all --out leaderboards

test: $(TEST_STAMP)
	$(BIN)/python -m pytest -q

bench: $(TEST_STAMP)
	$(BIN)/python -m pytest benchmarks -q --benchmark-only

clean:
	rm -rf $(VENV) .advarena
