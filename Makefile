# The few verbs developers type. The README's test command and .ci/run call these targets,
# so local runs and CI cannot diverge.

CARGO ?= cargo
EXAMPLES := target/conformance/package/.complete

.PHONY: run fmt lint test test-deps conformance-data bench ci

run:
	$(CARGO) run --release

fmt:
	$(CARGO) fmt --all -- --check

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## Official R4 examples (npm hl7.fhir.r4.examples@4.0.1), cached under target/ for the conformance tests.
conformance-data: $(EXAMPLES)
$(EXAMPLES):
	mkdir -p target/conformance
	cd target/conformance && npm pack --silent hl7.fhir.r4.examples@4.0.1 >/dev/null && tar xzf hl7.fhir.r4.examples-4.0.1.tgz
	touch $@

## Tools the tests drive: a Python venv with a real FHIR client library.
test-deps: conformance-data target/clients-venv/.complete
target/clients-venv/.complete: tests/clients/requirements.txt
	python3 -m venv target/clients-venv
	target/clients-venv/bin/pip install --quiet --disable-pip-version-check -r tests/clients/requirements.txt
	touch $@

## The test command: every unit, integration and conformance test of the workspace, then the
## HTTP API suite again against three replicas behind nginx (stateless replicas; needs nginx).
test: test-deps
	$(CARGO) build --bin careplane
	if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --profile ci; \
	else \
		$(CARGO) test --workspace; \
	fi
	if $(CARGO) nextest --version >/dev/null 2>&1; then \
		CAREPLANE_TEST_REPLICAS=3 $(CARGO) nextest run -p careplane-api --test api --profile ci; \
	else \
		CAREPLANE_TEST_REPLICAS=3 $(CARGO) test -p careplane-api --test api; \
	fi

bench:
	bash bench/run.sh

## deploy-check (offline verification of deploy/) and the other deploy verbs live here.
include Makefile.deploy

ci: fmt lint test deploy-check
