.PHONY: setup call test lint bench clean

setup:
	scripts/setup

## One real call through the agent (managed Asterisk 22, lab carrier, embedded defaults)
call: setup
	scripts/lab-call out

## Every test: unit, then integration against the real Asterisk
test: setup
	.venv/bin/python -m pytest -q -ra

lint: setup
	.venv/bin/ruff check voiceos_switch tests bench
	.venv/bin/ruff format --check voiceos_switch tests bench
	.venv/bin/mypy

bench: setup
	.venv/bin/python bench/pacing.py

clean:
	-.venv/bin/voiceos-switch asterisk down
	rm -rf out .pytest_cache
