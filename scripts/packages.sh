#!/bin/sh
# Prints the packages of the named sections of scripts/packages.txt (all sections when none is named).
# Usage: packages.sh [runtime] [build] [test] [fuzz] [deploy-test]
set -eu
list="$(dirname "$0")/packages.txt"
awk -v want=" $* " '
  /^[[:space:]]*#/ || /^[[:space:]]*$/ { next }
  /^\[.*\]$/ { section = substr($0, 2, length($0) - 2); next }
  want == "  " || index(want, " " section " ") { sub(/#.*/, ""); for (i = 1; i <= NF; i++) print $i }
' "$list"
