#!/usr/bin/env bash
# tests/install/check.sh [TOP]: what `scons install` delivers, used as a
# user outside the tree would use it (TOP, default build, is the release
# build; only its test plugin gate.so is taken from there).
#
#  1. `scons install` into a temporary DESTDIR with PREFIX=/opt/shmipc-check:
#     the files, the library's SONAME and links, no installed program or
#     plugin needing libshmipc.so, the paths written into shmipcd.conf,
#     shmipcd.service and shmipc.pc; a second install keeps a changed
#     shmipcd.conf and writes shmipcd.conf.dist.
#  2. With pkg-config alone (PKG_CONFIG_PATH into the DESTDIR and
#     PKG_CONFIG_SYSROOT_DIR=DESTDIR: the .pc holds the real PREFIX, as a
#     packaged one does, and pkg-config puts the staging root before its
#     paths): README's plugin example and tests/install/client.c built
#     out of the tree; the installed shmipcd serves the plugin and the
#     installed kv; the client and shmipc-call get the right answers, and
#     shmipc-call's exit statuses (timeout, closed stream, no server, bad
#     usage); shmipcctl -c finds the admin socket in the config.
#  3. --help and --version of every installed program.
#  4. A second install with a temporary PREFIX and no DESTDIR, whose unit
#     then names real files: `systemd-analyze verify` (skipped, said so,
#     without systemd-analyze).
#  5. `scons uninstall` of both: only the changed shmipcd.conf stays.
# Everything runs in one temporary directory, removed at the end with every
# process started here stopped; no file of theirs may be left in /dev/shm
# or /tmp.
set -euo pipefail
cd "$(dirname "$0")/../.."
TOP=${1:-build}
JOBS=$(nproc 2>/dev/null || echo 2)
PREFIX=/opt/shmipc-check
PROGRAMS=(shmipcd shmipcctl shmipc-call greeter_server greeter_client echo_server
          shmipc-pingpong shmipc-bench)
VERSION=$(sed -n 's/^#define SHMIPC_VERSION "\(.*\)"$/\1/p' include/shmipc/shmipc.h)
SONAME_MAJOR=${VERSION%%.*}
SO_FULL=libshmipc.so.${VERSION%.*}

tmp=$(mktemp -d /tmp/shmipc-install-XXXXXX)
dest=$tmp/dest
root=$dest$PREFIX
run=$tmp/run
oot=$tmp/oot
daemon=
shm_list() { find /dev/shm -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | LC_ALL=C sort; }
shm_before=$(shm_list)

cleanup() {
    if [ -n "$daemon" ]; then
        kill "$daemon" 2>/dev/null || true
        wait "$daemon" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

fail() {
    echo "install check: FAILED: $*" >&2
    if [ -n "$daemon" ] && [ -s "$tmp/shmipcd.log" ]; then
        echo "shmipcd's log:" >&2
        sed 's/^/   /' "$tmp/shmipcd.log" >&2
    fi
    exit 1
}
step() { echo "-- $*"; }
scons_q() { scons -Q -j"$JOBS" "$@" | grep -v 'is up to date' || true; }

# expect WHAT WANT GOT
expect() {
    [ "$2" = "$3" ] || fail "$1: expected '$2', got '$3'"
}

# runs CMD..., sets rc, out and err (stdout and stderr, whole).
capture() {
    rc=0
    "$@" > "$tmp/out" 2> "$tmp/err" || rc=$?
    out=$(cat "$tmp/out")
    err=$(cat "$tmp/err")
}

# ---- 1. install ----
step "scons install PREFIX=$PREFIX DESTDIR=$dest"
scons_q install PREFIX="$PREFIX" DESTDIR="$dest" | sed 's/^/   /'
for f in "${PROGRAMS[@]/#/bin/}" lib/libshmipc.a lib/$SO_FULL \
         include/shmipc/{shmipc,plugin,wire,errors}.h \
         lib/shmipcd/{echo,greeter,kv,delay,bench}.so lib/pkgconfig/shmipc.pc \
         etc/shmipcd.conf lib/systemd/system/shmipcd.service; do
    [ -f "$root/$f" ] || fail "not installed: $PREFIX/$f"
done
for f in "${PROGRAMS[@]}"; do
    [ -x "$root/bin/$f" ] || fail "$PREFIX/bin/$f is not executable"
done
expect "libshmipc.so.$SONAME_MAJOR" "$SO_FULL" "$(readlink "$root/lib/libshmipc.so.$SONAME_MAJOR")"
expect "libshmipc.so" "$SO_FULL" "$(readlink "$root/lib/libshmipc.so")"
soname=$(readelf -d "$root/lib/$SO_FULL" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
expect "SONAME of $SO_FULL" "libshmipc.so.$SONAME_MAJOR" "$soname"
# The installed programs and plugins must run without LD_LIBRARY_PATH: none
# of them needs libshmipc.so (programs link it statically, plugins get the
# host API table).
for f in "$root"/bin/* "$root"/lib/shmipcd/*.so; do
    if readelf -d "$f" | grep -q 'NEEDED.*libshmipc'; then
        fail "$f needs libshmipc.so at run time"
    fi
done
conf=$root/etc/shmipcd.conf
grep -qx "plugin_dir = \"$PREFIX/lib/shmipcd\";" "$conf" \
    || fail "installed shmipcd.conf: plugin_dir is not $PREFIX/lib/shmipcd"
sockets=$(grep -E '^[[:space:]]*(admin|listen)[[:space:]]*=' "$conf")
[ -n "$sockets" ] || fail "installed shmipcd.conf: no admin or listen key found"
! grep -v '"unix:/run/shmipcd/' <<< "$sockets" \
    || fail "installed shmipcd.conf: a socket outside /run/shmipcd"
unit=$root/lib/systemd/system/shmipcd.service
grep -qx "ExecStart=$PREFIX/bin/shmipcd -c $PREFIX/etc/shmipcd.conf" "$unit" \
    || fail "shmipcd.service: ExecStart does not run $PREFIX/bin/shmipcd"
grep -qx 'Type=notify' "$unit" || fail "shmipcd.service: not Type=notify"
# shellcheck disable=SC2016
grep -qx 'ExecReload=/bin/kill -HUP $MAINPID' "$unit" || fail "shmipcd.service: ExecReload"
! grep -q '@[A-Z]*@' "$unit" || fail "shmipcd.service: a placeholder left: $(grep '@' "$unit")"
# The installed tree must not name the staging directory anywhere.
! grep -rlsI -- "$dest" "$root" || fail "an installed file names DESTDIR"

step "a changed shmipcd.conf survives a second install"
cp "$conf" "$tmp/shipped.conf"
echo "# changed by the administrator" >> "$conf"
cp "$conf" "$tmp/changed.conf"
capture scons -Q install PREFIX="$PREFIX" DESTDIR="$dest"
[ "$rc" -eq 0 ] || fail "second install: $err"
cmp -s "$conf" "$tmp/changed.conf" || fail "the second install changed shmipcd.conf"
cmp -s "$conf.dist" "$tmp/shipped.conf" || fail "no shmipcd.conf.dist with the new file"
grep -q "shmipcd.conf exists and was kept" <<< "$out" || fail "the second install said nothing"

# ---- 2. out-of-tree plugin and client, with pkg-config alone ----
step "pkg-config: an out-of-tree plugin (README's example) and client"
export PKG_CONFIG_PATH=$root/lib/pkgconfig PKG_CONFIG_SYSROOT_DIR=$dest
expect "pkg-config --modversion" "$VERSION" "$(pkg-config --modversion shmipc)"
libdir=$(pkg-config --variable=libdir shmipc)
plugindir=$(pkg-config --variable=plugindir shmipc)
# pkgconf puts the sysroot before variables too; pkg-config 0.29 does not.
case $libdir in "$dest"/*) ;; *) libdir=$dest$libdir ;; esac
case $plugindir in "$dest"/*) ;; *) plugindir=$dest$plugindir ;; esac
expect "plugindir" "$root/lib/shmipcd" "$plugindir"
mkdir -p "$oot" "$run" "$tmp/gate"
# The first indented block after "Writing a plugin" that exports a plugin.
awk '/^Writing a plugin$/ { on = 1; next }
     !on { next }
     /^    / { blk = blk substr($0, 5) "\n"; next }
     /^$/ { if (blk != "") blk = blk "\n"; next }
     { if (blk ~ /SHMIPC_PLUGIN_EXPORT/) { printf "%s", blk; found = 1; exit } blk = "" }
     END { if (!found && blk ~ /SHMIPC_PLUGIN_EXPORT/) printf "%s", blk }' README \
    > "$oot/myecho.c"
grep -q SHMIPC_PLUGIN_EXPORT "$oot/myecho.c" || fail "no plugin example found in README"
# shellcheck disable=SC2046
(cd "$oot" && cc -Wall -Werror -shared -fPIC $(pkg-config --cflags shmipc) -o myecho.so myecho.c) \
    || fail "README's plugin example does not build against the installed headers"
# shellcheck disable=SC2046
cc -Wall -Wextra -Werror -o "$oot/client" tests/install/client.c \
    $(pkg-config --cflags --libs shmipc) -Wl,-rpath,"$libdir" \
    || fail "tests/install/client.c does not build with pkg-config's flags"
readelf -d "$oot/client" | grep -q "NEEDED.*\[libshmipc.so.$SONAME_MAJOR\]" \
    || fail "the client does not need libshmipc.so.$SONAME_MAJOR"
# And statically: the archive plus what Libs.private names.
private=$(pkg-config --static --libs-only-l shmipc)
# shellcheck disable=SC2046,SC2086
cc -Wall -Wextra -Werror -o "$oot/client-static" tests/install/client.c \
    $(pkg-config --cflags shmipc) "$libdir/libshmipc.a" ${private//-lshmipc/} \
    || fail "tests/install/client.c does not link libshmipc.a with Libs.private"
! readelf -d "$oot/client-static" | grep -q 'NEEDED.*libshmipc' \
    || fail "the static client needs libshmipc.so"

step "the installed shmipcd serves the out-of-tree plugin"
cat > "$tmp/shmipcd.conf" <<EOF
admin = "unix:$run/admin.sock";
plugin_dir = "$plugindir";
services = (
    { name = "myecho"; listen = "unix:$run/myecho.sock"; plugin = "$oot/myecho.so"; },
    { name = "kv"; listen = "unix:$run/kv.sock"; plugin = "kv.so"; },
    { name = "gate"; listen = "unix:$run/gate.sock"; plugin = "$PWD/$TOP/tests/plugins/gate.so";
      config = { gate_dir = "$tmp/gate"; }; }
);
EOF
capture "$root/bin/shmipcd" -t -c "$tmp/shmipcd.conf"
[ "$rc" -eq 0 ] || fail "shmipcd -t: $err"
"$root/bin/shmipcd" -c "$tmp/shmipcd.conf" 2> "$tmp/shmipcd.log" &
daemon=$!
for _ in $(seq 200); do
    [ -S "$run/admin.sock" ] && [ -S "$run/gate.sock" ] && break
    kill -0 "$daemon" 2>/dev/null || fail "shmipcd exited at start"
    sleep 0.05
done
[ -S "$run/admin.sock" ] || fail "shmipcd did not come up in 10 s"

expect "client ping" "pong" "$("$oot/client" "unix:$run/myecho.sock" ping)"
expect "client echo" "hello there" "$("$oot/client" "unix:$run/myecho.sock" "hello there")"
expect "static client ping" "pong" "$("$oot/client-static" "unix:$run/myecho.sock" ping)"

step "shmipc-call against kv, gate and nothing"
call=$root/bin/shmipc-call
kv=unix:$run/kv.sock
expect "SET k v" "OK" "$("$call" "$kv" "SET k v")"
expect "GET k" "VALUE v" "$("$call" "$kv" "GET k")"
expect "COUNT" "1" "$("$call" "$kv" COUNT)"
expect "GET k --file" "VALUE v" "$("$call" --file "$kv" "GET k")"
expect "GET k --hex" "56414c55452076" "$("$call" --hex "$kv" "GET k")"
expect "GET k from stdin" "VALUE v" "$(printf 'GET k' | "$call" "$kv" -)"
printf 'SET bin \x00\x01\tz\\\n' > "$tmp/req"
expect "SET from -f FILE" "OK" "$("$call" "$kv" -f "$tmp/req")"
expect "GET bin (text)" 'VALUE \x00\x01\tz\\\n' "$("$call" "$kv" "GET bin")"
"$call" --raw "$kv" "GET bin" > "$tmp/raw"
printf 'VALUE \x00\x01\tz\\\n' | cmp -s - "$tmp/raw" || fail "GET bin --raw: other bytes"
expect "a missing key" "NOT_FOUND" "$("$call" "$kv" "GET nope")"
capture "$call" "unix:$run/gate.sock" "fail now"
expect "exit status, stream closed" 1 "$rc"
grep -q "closed" <<< "$err" || fail "shmipc-call on a closed stream says: $err"
capture "$call" --timeout-ms 300 "unix:$run/gate.sock" "block please"
expect "exit status, timeout" 1 "$rc"
grep -q "timeout" <<< "$err" || fail "shmipc-call on a timeout says: $err"
touch "$tmp/gate/open" # the blocked handler answers (nobody listens any more)
capture "$call" "unix:$run/none.sock" "x"
expect "exit status, no server" 1 "$rc"
grep -q "cannot connect" <<< "$err" || fail "shmipc-call without a server says: $err"
for bad in "" "--timeout-ms x $kv COUNT" "$kv a b" "-f $tmp/req $kv COUNT" "--bogus $kv"; do
    # shellcheck disable=SC2086
    capture "$call" $bad
    expect "exit status of 'shmipc-call $bad'" 2 "$rc"
done

step "shmipcctl -c finds the admin socket in the config"
capture "$root/bin/shmipcctl" -c "$tmp/shmipcd.conf" status
[ "$rc" -eq 0 ] || fail "shmipcctl -c CONF status: $err"
grep -q myecho <<< "$out" || fail "shmipcctl status does not show the myecho service: $out"
capture "$root/bin/shmipcctl" -c "$tmp/missing.conf" status
expect "exit status of shmipcctl -c MISSING" 1 "$rc"
"$root/bin/shmipcctl" -c "$tmp/shmipcd.conf" stop > /dev/null
for _ in $(seq 200); do kill -0 "$daemon" 2>/dev/null || break; sleep 0.05; done
kill -0 "$daemon" 2>/dev/null && fail "shmipcd still runs 10 s after shmipcctl stop"
rc=0
wait "$daemon" || rc=$?
expect "shmipcd's exit status after stop" 0 "$rc"
ls -d /tmp/shmipcd-"$daemon"-* > /dev/null 2>&1 && fail "shmipcd left its plugin copies in /tmp"
daemon=

# ---- 3. --help and --version ----
# Every program is tried; the failures are reported together at the end.
step "--help and --version of every installed program"
help_failed=()
for p in "${PROGRAMS[@]}"; do
    capture "$root/bin/$p" --help
    if [ "$rc" -ne 0 ] || ! grep -qi "usage" <<< "$out"; then
        help_failed+=("$p --help: exit status $rc, stdout '${out%%$'\n'*}', stderr '${err%%$'\n'*}'")
    fi
    capture "$root/bin/$p" --version
    if [ "$rc" -ne 0 ] || ! grep -q "(shmipc) $VERSION\$" <<< "$out"; then
        help_failed+=("$p --version: exit status $rc, stdout '$out', stderr '${err%%$'\n'*}'")
    fi
done

# ---- 4. systemd ----
step "systemd-analyze verify on an installed unit"
sys=$tmp/sysprefix
capture scons -Q install PREFIX="$sys"
[ "$rc" -eq 0 ] || fail "install with PREFIX=$sys: $err"
if command -v systemd-analyze > /dev/null; then
    capture systemd-analyze verify "$sys/lib/systemd/system/shmipcd.service"
    if [ "$rc" -ne 0 ] || [ -n "$err" ]; then fail "systemd-analyze verify: $err$out"; fi
    echo "   systemd-analyze verify: no complaint"
else
    echo "   skipped: systemd-analyze is not installed (Debian package systemd)"
fi

# ---- 5. uninstall ----
step "scons uninstall"
capture scons -Q uninstall PREFIX="$sys"
[ "$rc" -eq 0 ] || fail "uninstall PREFIX=$sys: $err"
left=$(find "$sys" ! -type d)
[ -z "$left" ] || fail "left after uninstall: $left"
capture scons -Q uninstall PREFIX="$PREFIX" DESTDIR="$dest"
[ "$rc" -eq 0 ] || fail "uninstall: $err"
grep -q "kept $conf" <<< "$out" || fail "uninstall did not say it kept the changed config"
left=$(find "$dest" ! -type d)
expect "files left after uninstall" "$conf" "$left"

# ---- leftovers ----
# New /dev/shm files of a process that has ended (the library names its
# file-mode pools shmipc_<pid>...): nothing of ours may stay.
shm_left=$(LC_ALL=C comm -13 <(printf '%s\n' "$shm_before") <(shm_list) |
           while IFS= read -r n; do
               pid=$(sed -n 's/^shmipc_\([0-9]*\).*/\1/p' <<< "$n")
               [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null && echo "$n"
           done || true)
[ -z "$shm_left" ] || fail "left in /dev/shm: $shm_left"
if [ ${#help_failed[@]} -gt 0 ]; then
    printf '   %s\n' "${help_failed[@]}" >&2
    fail "${#help_failed[@]} --help/--version calls failed (above)"
fi
echo "install check: passed (version $VERSION, PREFIX=$PREFIX in a DESTDIR; removed)"
