#!/usr/bin/env bash
# Builds the Lambda deployment zip (`bootstrap` = the datamailer binary, for provided.al2023)
# into dist/, then checks the glibc symbol versions it needs against Amazon Linux 2023's
# glibc 2.34.
#
#   ARCH=x86_64|arm64        target architecture (default x86_64; arm64 needs
#                            `rustup target add aarch64-unknown-linux-gnu`)
#   LAMBDA_PROFILE=release|dev
#                            release (default) for deployment; dev for CI's emulator test
#   LAMBDA_COMPILER=zig|cargo
#                            zig (default): cargo-lambda cross-links against glibc 2.34 with
#                            zig (ziglang from the venv); cargo: the host toolchain, only for
#                            ARCH=x86_64 on an x86_64 host, reusing the test build's target dir
#                            (the glibc check below still guards the result)
#   RDS_CA_BUNDLE=path       the RDS CA bundle (https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem)
#                            to ship as rds-ca.pem: the workers then verify the database's
#                            certificate (sslmode=verify-full) instead of only encrypting
#
# Output: dist/datamailer-lambda-$ARCH.zip (and its bootstrap under dist/lambda/).
set -euo pipefail
cd "$(dirname "$0")/.."

ARCH=${ARCH:-x86_64}
LAMBDA_PROFILE=${LAMBDA_PROFILE:-release}
LAMBDA_COMPILER=${LAMBDA_COMPILER:-zig}
CARGO_LAMBDA=${CARGO_LAMBDA:-$PWD/.venv/bin/cargo-lambda}
MAX_GLIBC=2.34
export PATH="$PWD/.venv/bin:$PATH" # zig (python-zig) for cargo-lambda

case "$ARCH" in
  x86_64) triple=x86_64-unknown-linux-gnu; machine="X86-64" ;;
  arm64 | aarch64) ARCH=arm64; triple=aarch64-unknown-linux-gnu; machine="AArch64" ;;
  *) echo "ARCH must be x86_64 or arm64, not $ARCH" >&2; exit 2 ;;
esac
case "$LAMBDA_PROFILE" in
  release) profile_args=(--release); profile_dir=release ;;
  dev) profile_args=(); profile_dir=debug ;;
  *) echo "LAMBDA_PROFILE must be release or dev" >&2; exit 2 ;;
esac
target_dir=${CARGO_TARGET_DIR:-$PWD/target}
mkdir -p dist/lambda
started=$(date +%s)

if [ "$LAMBDA_COMPILER" = cargo ]; then
  if [ "$ARCH" != x86_64 ] || [ "$(uname -m)" != x86_64 ]; then
    echo "LAMBDA_COMPILER=cargo builds for the host only (x86_64); use the default zig for $ARCH" >&2
    exit 2
  fi
  # The host build (same target dir and flags as `cargo test`): no extra compile in CI.
  cargo build "${profile_args[@]}" --bin datamailer
  binary="$target_dir/$profile_dir/datamailer"
else
  if ! rustup target list --installed 2>/dev/null | grep -qx "$triple"; then
    echo "the Rust target $triple is not installed: rustup target add $triple" >&2
    exit 2
  fi
  # The .2.34 suffix makes zig link against glibc 2.34 (AL2023), whatever the host has.
  "$CARGO_LAMBDA" lambda build "${profile_args[@]}" --bin datamailer \
    --target "$triple.$MAX_GLIBC" \
    --output-format binary --lambda-dir dist/lambda/build
  binary="dist/lambda/build/datamailer/bootstrap"
fi

stage=dist/lambda/$ARCH
rm -rf "$stage" && mkdir -p "$stage"
cp "$binary" "$stage/bootstrap"
chmod 755 "$stage/bootstrap"
files=(bootstrap)
if [ -n "${RDS_CA_BUNDLE:-}" ]; then
  grep -q -- "-----BEGIN CERTIFICATE-----" "$RDS_CA_BUNDLE" || {
    echo "RDS_CA_BUNDLE=$RDS_CA_BUNDLE holds no PEM certificate" >&2; exit 1; }
  cp "$RDS_CA_BUNDLE" "$stage/rds-ca.pem"
  files+=(rds-ca.pem)
fi
zip_path=dist/datamailer-lambda-$ARCH.zip
rm -f "$zip_path"
(cd "$stage" && zip -q -X "../../datamailer-lambda-$ARCH.zip" "${files[@]}")

# The checks: the right architecture, and no glibc symbol newer than AL2023's.
readelf -h "$stage/bootstrap" | grep -q "Machine:.*$machine" || {
  echo "FAIL: $stage/bootstrap is not an $machine binary" >&2; exit 1; }
needed=$(objdump -T "$stage/bootstrap" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV)
newest=$(printf '%s\n' "$needed" | tail -1)
too_new=$(printf '%s\n' "$needed" | awk -v max="$MAX_GLIBC" '
  { split($0, a, "."); split(max, m, ".");
    if (a[1] + 0 > m[1] + 0 || (a[1] + 0 == m[1] + 0 && a[2] + 0 > m[2] + 0)) print "GLIBC_" $0 }')
if [ -n "$too_new" ]; then
  echo "FAIL: $stage/bootstrap needs glibc symbols newer than $MAX_GLIBC (AL2023): $too_new" >&2
  exit 1
fi
echo "built $zip_path ($ARCH, $LAMBDA_PROFILE, $LAMBDA_COMPILER) in $(( $(date +%s) - started )) s:" \
  "$(du -h "$zip_path" | cut -f1), needs glibc ≤ $newest (AL2023 has $MAX_GLIBC); holds ${files[*]}"
