.PHONY: serve test build release fmt lint

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
