# Everything a fresh machine needs: `make demo` and `make test` create .venv and install the locked deps.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The SAM CLI pins its own boto3, so it lives in a venv of its own (requirements-sam.lock).
SAM_VENV := .venv-sam
SAM_STAMP := $(SAM_VENV)/.installed

$(SAM_STAMP): requirements-sam.lock
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/pip install --quiet --upgrade pip
	$(SAM_VENV)/bin/pip install --quiet -r requirements-sam.lock
	touch $(SAM_STAMP)

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

.PHONY: install demo test lint typecheck cfn validate pytest fuzz faults bench bench-quotas bench-sg bench-cost bench-scale package clean

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/opsbot demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

cfn: $(STAMP) $(SAM_STAMP)
	$(BIN)/cfn-lint template.yaml template-member.yaml template-stackset.yaml  # the StackSet: plain CloudFormation
	mkdir -p build && $(BIN)/python -m opsbot.asl_lint template.yaml > build/asl-lint.json
	$(BIN)/cfn-lint build/asl-lint.json  # the state machine definitions themselves (E3601: ASL schema)
	SAM_CLI_TELEMETRY=0 $(SAM_VENV)/bin/sam validate --lint --region us-east-1 --template template.yaml
	SAM_CLI_TELEMETRY=0 $(SAM_VENV)/bin/sam validate --lint --region us-east-1 --template template-member.yaml

validate: $(STAMP)
	$(BIN)/opsbot validate

pytest: $(STAMP)
	$(BIN)/pytest -q

test: lint typecheck cfn validate pytest

# Faults injected into the process (lost replies, throttling, a killed process) for every mutating call
# of every scenario; `make test` runs a subset of the matrix.
faults: $(STAMP)
	FAULTS=full $(BIN)/pytest -q -m faults -p no:cacheprovider tests/test_faults.py

# Property-based tests over the real recorded inputs: 2,000 mutated examples per handler, with counts.
# (`make test` runs the same tests with the small "ci" profile.)
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/pytest -q -s -m fuzz -p no:cacheprovider tests/test_fuzz_inputs.py

bench: $(STAMP)
	$(BIN)/python bench/snapshot_bench.py
	$(BIN)/python bench/sg_bench.py
	$(BIN)/python bench/slack_bench.py
	$(BIN)/python bench/quota_bench.py

# An Organization of 1,000 accounts x 17 regions: plan time, manifest bytes, Plan's peak RSS, state payload
# size by fleet size, ledger calls per unit and the wall time of 100 units executed.
bench-scale: $(STAMP)
	$(BIN)/python bench/scale_bench.py

# 1,000 service quotas over 4 account-regions: GetMetricData calls per quota and wall seconds.
bench-quotas: $(STAMP)
	$(BIN)/python bench/quota_bench.py

# The Lambda package: automations/, handlers/, rules/ and the runtime pins; not the CLI, tests or docs.
# Then: sam build && sam deploy --guided
package:
	rm -rf build/lambda && mkdir -p build/lambda
	cp -r automations handlers rules build/lambda/
	cp requirements-lambda.txt build/lambda/requirements.txt
	$(MAKE) --no-print-directory install && $(BIN)/python -m automations.compiled_rules build/lambda/rules
	find build/lambda -name __pycache__ -prune -exec rm -rf {} +
	$(BIN)/opsbot check-package build/lambda  # refuses the local demo's ids (opsbot/local/rules/)

# opsbot's own monthly bill for 10 x 8 and 1,000 x 17 account-regions, from counted calls (docs/cost.md).
bench-cost: $(STAMP)
	$(BIN)/python bench/cost_model.py

# The security-group path against its floor (cold, warm, whole handler), and the Slack endpoint's cold ack.
bench-sg: $(STAMP)
	$(BIN)/python bench/sg_bench.py
	$(BIN)/python bench/slack_bench.py

clean:
	rm -rf $(VENV) $(SAM_VENV) .opsbot .mypy_cache .ruff_cache .pytest_cache
