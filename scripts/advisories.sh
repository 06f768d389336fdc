#!/usr/bin/env bash
# cargo deny's advisories check needs the RustSec database, which it fetches from GitHub. Where
# GitHub is out of reach (a machine that reaches only the package registries) it says so and
# does not pretend to have checked; where it is reachable, any advisory fails the lint.
#   scripts/advisories.sh path/to/cargo-deny
set -euo pipefail
deny=${1:?usage: advisories.sh path/to/cargo-deny}
if curl -sfI --max-time 10 https://github.com/rustsec/advisory-db >/dev/null 2>&1; then
  exec "$deny" check advisories
fi
echo "advisories NOT checked: github.com (the RustSec advisory database) is unreachable from this machine; run 'cargo deny check advisories' where it is." >&2
