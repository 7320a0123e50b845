#!/usr/bin/env bash
# ab_garage.sh — attache binaries alternating against one Garage: bench/ab.sh with SERVER=garage.
#
#   bench/ab_garage.sh OUT ROUNDS BIN...      # e.g. bench/ab_garage.sh /tmp/ab 4 old/attache new/attache
#
# Kept for the commands recorded with it; see bench/ab.sh for the variants and the output.
SERVER=garage exec "$(dirname "${BASH_SOURCE[0]}")/ab.sh" "$@"
