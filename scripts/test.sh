#!/usr/bin/env bash
# Runs every test of the project: formatting, lints, unit tests and the real-kernel
# integration tests (which need root: network namespaces, cgroup2, bpffs, eBPF).
# Installs what it needs first (scripts/setup.sh), idempotently.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
bash scripts/setup.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo build (agent binary used by the integration tests)"
cargo build --workspace --bins
echo "== cargo test"
cargo test --workspace -- --test-threads="${TEST_THREADS:-4}" 2>&1 | tee target/test-output.log
# The agent as a systemd service in qemu, on the Debian 6.1 and 6.12 kernels (README: VM
# integration test). Installs what it needs (scripts/setup-vm.sh); fails when it cannot run,
# unless INTERCEPTOR_SKIP_VM=1.
echo "== cargo xtask vm-test"
# The xtask binary from the build above (`cargo xtask` would rebuild shared dependencies
# with the xtask package's own feature set).
target/debug/xtask vm-test --lean 2>&1 | tee target/vm-test-output.log
# Sum every suite; fail if nothing ran (a broken harness must not look green).
passed=$(grep -Eo '^test result: [a-zA-Z]+\. [0-9]+ passed' target/test-output.log | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' target/test-output.log | awk '{s+=$1} END {print s+0}')
vm_passed=$(grep -c '^vm-test \[.*\] PASS ' target/vm-test-output.log || true)
vm_failed=$(grep -c '^vm-test \[.*\] FAIL ' target/vm-test-output.log || true)
echo "vm-test: $vm_passed checks passed, $vm_failed failed"
passed=$((passed + vm_passed))
failed=$((failed + vm_failed))
if [ "$passed" -eq 0 ]; then
  echo "no test ran" >&2
  exit 1
fi
echo "total: $passed passed, $failed failed"
