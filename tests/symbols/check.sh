#!/usr/bin/env bash
# tests/symbols/check.sh LIBSHMIPC.a LIBSHMIPC.so
#
# The names libshmipc puts into a program that links it. Every global symbol
# the static archive defines and every dynamic symbol the shared library
# exports must be public API, declared with SHMIPC_API in include/shmipc/*.h
# (or an internal shmipc__ name); anything else could collide with a name of
# the program (its own log_msg, queue_put, ...). And every name the headers
# declare with SHMIPC_API must be defined in both. Prints the offenders and
# exits 1 when one is found.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 LIBSHMIPC.a LIBSHMIPC.so" >&2; exit 2; }
archive=$1
shared=$2
headers=("$(dirname "$0")"/../../include/shmipc/*.h)
NM=${NM:-nm}

# The declarations that begin with SHMIPC_API (one may span lines), minus
# the macro's own definition: the identifier before the first '(' (a
# function) or the ';' (a variable).
declared=$(grep -hv '^[[:space:]]*#' "${headers[@]}" | tr '\n' ' ' |
           grep -oE 'SHMIPC_API[^;(]*[(;]' |
           sed -E 's/[[:space:]]*[(;]$//; s/.*[^A-Za-z0-9_]//' | LC_ALL=C sort -u)
if [ -z "$declared" ]; then
    echo "symbols: no SHMIPC_API declaration found in ${headers[*]}" >&2
    exit 1
fi

failed=0
# check WHAT NAMES: NAMES (a line each) are the global names WHAT defines.
check() {
    local what=$1 names=$2 bad missing
    if [ -z "$names" ]; then
        echo "symbols: $what defines no global name at all" >&2
        failed=1
        return
    fi
    bad=$(LC_ALL=C comm -23 <(printf '%s\n' "$names") <(printf '%s\n' "$declared") |
          grep -v '^shmipc__' || true)
    missing=$(LC_ALL=C comm -13 <(printf '%s\n' "$names") <(printf '%s\n' "$declared") || true)
    if [ -n "$bad" ]; then
        echo "symbols: $what: global names not declared SHMIPC_API in include/shmipc/*.h" \
             "(make them static, give them hidden visibility or declare them):" >&2
        awk '{ print "   " $0 }' <<< "$bad" >&2
        failed=1
    fi
    if [ -n "$missing" ]; then
        echo "symbols: $what: SHMIPC_API names of include/shmipc/*.h it does not define:" >&2
        awk '{ print "   " $0 }' <<< "$missing" >&2
        failed=1
    fi
    if [ -z "$bad" ] && [ -z "$missing" ]; then
        echo "symbols: $what: $(printf '%s\n' "$names" | wc -l) global names, the public API"
    fi
}

# nm prints "VALUE TYPE NAME" for a symbol, plus file names and blank lines.
check "$archive" "$("$NM" -g --defined-only "$archive" | awk 'NF == 3 { print $3 }' |
                   LC_ALL=C sort -u)"
check "$shared" "$("$NM" -D --defined-only "$shared" | awk 'NF == 3 { print $3 }' |
                  sed 's/@.*//' | LC_ALL=C sort -u)"
exit $failed
