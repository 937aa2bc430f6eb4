.PHONY: serve test build release fmt lint validate-infra lambda-artifact load-test

## Run the product on the embedded defaults (local Postgres, capture mailer) at 127.0.0.1:8000.
serve:
	scripts/ensure-postgres.sh
	cargo run --bin datamailer -- serve

## The whole test suite (what CI runs): fmt, clippy, unit and integration tests.
test:
	mkdir -p target
	scripts/test.sh

build:
	cargo build

release:
	cargo build --release

fmt:
	cargo fmt --all

lint:
	cargo clippy --workspace --all-targets -- -D warnings

## Offline checks of the AWS template and parameter files (no AWS calls), then cfn-lint.
validate-infra:
	cargo run -q --bin datamailer -- validate-infra
	@test -x .venv/bin/cfn-lint || scripts/test-env.sh
	@test -x .venv/bin/cfn-lint || .venv/bin/pip install --quiet --disable-pip-version-check 'cfn-lint>=1,<2'
	.venv/bin/cfn-lint infra/cloudformation/datamailer-mvp.json

## The Lambda deployment zip, dist/datamailer-lambda-$(ARCH).zip, checked against AL2023's glibc.
## ARCH=x86_64 (default) or arm64 (needs `rustup target add aarch64-unknown-linux-gnu`);
## LAMBDA_PROFILE=release (default) or dev; LAMBDA_COMPILER=zig (default) or cargo (host x86_64);
## RDS_CA_BUNDLE=path ships the RDS CA bundle so the workers verify the database (verify-full).
ARCH ?= x86_64
LAMBDA_PROFILE ?= release
LAMBDA_COMPILER ?= zig
RDS_CA_BUNDLE ?=
lambda-artifact:
	ARCH=$(ARCH) LAMBDA_PROFILE=$(LAMBDA_PROFILE) LAMBDA_COMPILER=$(LAMBDA_COMPILER) RDS_CA_BUNDLE=$(RDS_CA_BUNDLE) scripts/lambda-artifact.sh

## `make serve` with a local Prometheus scraping it (dashboards/prometheus/prometheus.yml, its
## alerting rules loaded) at http://127.0.0.1:$(PROMETHEUS_PORT); dashboards/README.md shows
## how to add Grafana. Installs Debian's prometheus package if it is missing.
.PHONY: observe
PROMETHEUS_PORT ?= 9090
observe:
	scripts/ensure-postgres.sh
	@test -x /usr/bin/prometheus || { S=""; [ "$$(id -u)" -eq 0 ] || S=sudo; $$S env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus; }
	cargo build --bin datamailer
	mkdir -p target/observe/prometheus
	@echo "Prometheus: http://127.0.0.1:$(PROMETHEUS_PORT) (log: target/observe/prometheus.log); datamailer: http://127.0.0.1:8000"
	/usr/bin/prometheus --config.file=dashboards/prometheus/prometheus.yml \
	  --storage.tsdb.path=target/observe/prometheus \
	  --web.listen-address=127.0.0.1:$(PROMETHEUS_PORT) >target/observe/prometheus.log 2>&1 & \
	  prom=$$!; trap 'kill $$prom 2>/dev/null' EXIT INT TERM; \
	  cargo run --bin datamailer -- serve

## The load harness (load-tests/): release build of datamailer and the harness, then the
## scenarios; report in load-tests/results/<UTC time>/report.md. SCENARIO=all (default) or one of
## transactional campaign mixed rate feedback overload lambda; ARGS="--quick" for a smoke run.
SCENARIO ?= all
ARGS ?=
load-test:
	scripts/ensure-postgres.sh
	cargo build --release -p datamailer -p load-tests
	cargo run --release -p load-tests -- $(SCENARIO) $(ARGS)
