.PHONY: setup demo call test lint bench clean

setup:
	scripts/setup

## A whole call through the agent on the embedded models, over AudioSocket on loopback
demo: setup
	mkdir -p out
	.venv/bin/voiceos-switch demo --wav out/demo.wav

## The same agent behind a real Asterisk 22, called from the lab carrier over SIP
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
	.venv/bin/python bench/latency.py

clean:
	-.venv/bin/voiceos-switch asterisk down
	rm -rf out .pytest_cache
