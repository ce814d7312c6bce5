#!/usr/bin/env bash
# Runs the OCI runtime-tools validation suite (validation/*/*.t) against one or more runc-compatible
# runtimes, one test file at a time, and prints a per-file summary and totals per runtime.
#
#   scripts/runtime-tools.sh [-w WORKDIR] [-t SECONDS] RUNTIME [RUNTIME...] [-- TEST...]
#
#   RUNTIME    path or name of the runtime (crun, /work/main/out/vessel, ...)
#   -w DIR     work dir: the runtime-tools checkout (unless RUNTIME_TOOLS_SRC), state, results
#              (default /tmp/vessel-runtime-tools)
#   -t SECS    timeout per test file (default 300; a Vessel container start under TCG takes 5-10 s)
#   TEST       test names (e.g. default hooks) instead of all of them
#
# Environment:
#   RUNTIME_TOOLS_SRC  an existing runtime-tools source dir to build and run in (not cloned)
#   RUNTIME_TOOLS_GIT  git URL or dir to clone from (default https://github.com/opencontainers/runtime-tools)
#   RUNTIME_TOOLS_REV  commit to check out (default 260e151: the last one Debian 12's Go 1.19 builds)
#   CGROUP2_UMOUNT     auto|yes|no: run the tests in a private mount namespace without the
#                      /sys/fs/cgroup/unified cgroup2 mount (auto: for crun on a hybrid host only)
#
# Results: WORKDIR/results/<runtime>/<test>.tap (stdout), .err (stderr), summary.tsv.
# Status per file: pass (exit 0 and every planned test ok; or, for the tests without test points,
# no error diagnostic), skip (every test point skipped), fail (a "not ok", an error diagnostic, or a
# non-zero exit after the plan), error (exit non-zero before any plan: a runtime command failed and
# the test gave up), crash (a Go panic of the test), timeout.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
workdir=/tmp/vessel-runtime-tools
per_test_timeout=300
while getopts "w:t:h" opt; do
  case $opt in
    w) workdir=$OPTARG ;;
    t) per_test_timeout=$OPTARG ;;
    *) sed -n '2,24p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
runtimes=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do runtimes+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
only_tests=("$@")
[ ${#runtimes[@]} -gt 0 ] || { echo "usage: $0 [-w WORKDIR] [-t SECONDS] RUNTIME [RUNTIME...] [-- TEST...]" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "the validation tests create containers: run as root" >&2; exit 2; }
mkdir -p "$workdir"
workdir=$(cd "$workdir" && pwd)

# ---- step 1: get and build runtime-tools (once) ----------------------------------------------------
"$here/install-deps.sh" golang-go make git tar util-linux coreutils
rev=${RUNTIME_TOOLS_REV:-260e151}
if [ -n "${RUNTIME_TOOLS_SRC:-}" ]; then
  src=$(cd "$RUNTIME_TOOLS_SRC" && pwd)
else
  src=$workdir/runtime-tools
  if [ ! -d "$src/.git" ]; then
    git clone -q "${RUNTIME_TOOLS_GIT:-https://github.com/opencontainers/runtime-tools}" "$src"
  fi
  # A detached checkout of the pinned commit: later commits need a newer Go than Debian 12 ships.
  [ "$(git -C "$src" rev-parse HEAD)" = "$(git -C "$src" rev-parse "$rev^{commit}")" ] ||
    git -C "$src" -c advice.detachedHead=false checkout -q "$rev"
fi
stamp=$src/.validation-built
if [ ! -f "$stamp" ] || [ -n "$(find "$src" -name '*.go' -newer "$stamp" -print -quit)" ]; then
  echo "building runtime-tools in $src"
  # The vendored modules only, and never the module proxy: the build needs no network.
  (cd "$src" && GOFLAGS=-mod=vendor GOPROXY=off GOCACHE=$workdir/go-cache \
     nice -n 10 make runtimetest validation-executables >"$workdir/build.log" 2>&1) ||
    { tail -20 "$workdir/build.log" >&2; exit 1; }
  touch "$stamp"
fi

# The tests find runtimetest and rootfs-<arch>.tar.gz relative to the current directory.
cd "$src"
if [ ${#only_tests[@]} -gt 0 ]; then
  tests=(); for t in "${only_tests[@]}"; do tests+=("validation/$t/$t.t"); done
else
  mapfile -t tests < <(find validation -name '*.t' | sort)
fi

# ---- step 3: run every test file per runtime ------------------------------------------------------

# Counts the top-level TAP lines of a result (the nested TAP of runtimetest is indented in YAML):
# prints "plan ok notok skip". Some files print several TAP streams (linux_cgroups_cpus): their
# plans add up.
tap_counts() {
  awk '
    /^1\.\.[0-9]+/            { split($0, p, "\\.\\."); plan += p[2] }
    /^ok /                    { ok++; if ($0 ~ /# [Ss][Kk][Ii][Pp]/) skip++ }
    /^not ok / && !/# TODO/   { notok++ }
    /^not ok .*# TODO/        { ok++ }
    END { printf "%s %d %d %d\n", (plan == "" ? "-" : plan), ok, notok, skip }' "$1"
}

# Whether the host is hybrid with a cgroup2 mount at /sys/fs/cgroup/unified: crun 1.8 then refuses
# to run ("cgroups in hybrid mode not supported, drop all controllers from cgroupv2").
hybrid_unified() { [ "$(stat -fc %T /sys/fs/cgroup/unified 2>/dev/null)" = cgroup2fs ]; }

# Removes the bundles a test left behind. A container without a mount namespace of its own
# (linux_ns_itype, linux_ns_nopath) gets proc, sysfs and /dev mounted inside its bundle in *our*
# mount namespace and nobody unmounts them: unmount those first, and never let rm cross into
# another file system.
remove_bundles() {
  local dir=$1 target
  findmnt -rn -o TARGET | awk -v d="$dir/" 'index($0, d) == 1' | sort -r | while read -r target; do
    umount -l "$(printf '%b' "$target")" || true
  done
  rm -rf --one-file-system "${dir:?}/"ocitest*
}

# Runs the files for one runtime; in a private mount namespace when asked (see below).
run_suite() {
  local runtime=$1 name=$2 results=$workdir/results/$2 state=$workdir/state/$2
  rm -rf "$results" "$workdir/tmp/$name"
  mkdir -p "$results" "$state" "$workdir/tmp/$name" "$workdir/bin"
  # A wrapper that gives the runtime a private --root: the tests cannot pass one, and cleanup after
  # a timeout must only touch the containers these tests created (not other users' in /run/vessel).
  local wrapper=$workdir/bin/$name
  printf '#!/bin/sh\nexec %q --root %q "$@"\n' "$runtime" "$state" >"$wrapper"
  chmod +x "$wrapper"
  printf 'test\tstatus\tplan\tok\tnotok\tskip\texit\tseconds\n' >"$results/summary.tsv"
  local t base start rc status plan ok notok skip id
  for t in "${tests[@]}"; do
    base=$(basename "$t" .t)
    start=$(date +%s)
    # Bundles go to TMPDIR (os.MkdirTemp): keep them in the work dir, where leftovers are visible.
    rc=0
    TMPDIR=$workdir/tmp/$name RUNTIME=$wrapper \
      timeout -k 10 "$per_test_timeout" nice -n 10 "./$t" >"$results/$base.tap" 2>"$results/$base.err" || rc=$?
    read -r plan ok notok skip < <(tap_counts "$results/$base.tap")
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status=timeout
    elif grep -q '^panic: ' "$results/$base.err"; then status=crash
    elif [ "$plan" = "-" ] && [ $rc -ne 0 ]; then status=error
    # The negative tests (*_fail) print nothing at all when the runtime refuses, as it should.
    elif [ "$plan" = "-" ] && [ -s "$results/$base.tap" ]; then status=error
    elif [ "$plan" = "-" ]; then status=pass
    elif [ $rc -ne 0 ] || [ "$notok" -gt 0 ] || [ "$ok" -ne "$plan" ]; then status=fail
    # The hook tests have no test points: a top-level "error" diagnostic is their failure.
    elif [ "$plan" -eq 0 ] && grep -q '^    "error"' "$results/$base.tap"; then status=fail
    elif [ "$ok" -gt 0 ] && [ "$skip" -eq "$ok" ]; then status=skip
    else status=pass
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$base" "$status" "$plan" "$ok" "$notok" "$skip" "$rc" \
      "$(( $(date +%s) - start ))" >>"$results/summary.tsv"
    printf '%-10s %-40s %-8s ok %s/%s, not ok %s, skip %s, exit %s\n' "$name" "$base" "$status" "$ok" "$plan" "$notok" "$skip" "$rc"
    # A test killed by the timeout (or one that forgot) leaves containers (for Vessel: VMs) behind.
    for id in $(timeout 60 "$wrapper" list -q 2>/dev/null || true); do
      echo "  cleanup: $name delete --force $id" >>"$results/$base.err"
      timeout 120 "$wrapper" delete --force "$id" >/dev/null 2>&1 || true
    done
    remove_bundles "$workdir/tmp/$name"
  done
}

for runtime in "${runtimes[@]}"; do
  path=$(command -v "$runtime") || { echo "runtime not found: $runtime" >&2; exit 2; }
  name=$(basename "$path")
  umount_unified=${CGROUP2_UMOUNT:-auto}
  [ "$umount_unified" = auto ] && { [ "$name" = crun ] && hybrid_unified && umount_unified=yes || umount_unified=no; }
  if [ "$umount_unified" = yes ]; then
    # crun's workaround: the whole run (tests, their containers, cleanup) in a private mount
    # namespace where the empty cgroup2 mount is gone, so crun sees a pure cgroup v1 host. The
    # host's mounts stay as they are; the namespace ends with the run.
    export -f run_suite tap_counts remove_bundles
    export workdir per_test_timeout
    TESTS="${tests[*]}" unshare --mount --propagation private bash -euo pipefail -c \
      'umount /sys/fs/cgroup/unified; read -ra tests <<<"$TESTS"; run_suite "$1" "$2"' _ "$path" "$name"
  else
    run_suite "$path" "$name"
  fi
done

# ---- summary ----------------------------------------------------------------------------------------
echo
for runtime in "${runtimes[@]}"; do
  name=$(basename "$(command -v "$runtime")")
  awk -F'\t' -v n="$name" 'NR > 1 { c[$2]++; total++ }
    END { printf "%-10s %d files: pass %d, skip %d, fail %d, error %d, crash %d, timeout %d\n", n, total,
          c["pass"], c["skip"], c["fail"], c["error"], c["crash"], c["timeout"] }' "$workdir/results/$name/summary.tsv"
done
if [ ${#runtimes[@]} -gt 1 ]; then
  # Side by side, one column per runtime.
  echo
  files=() header=$(printf '%-40s' file)
  for runtime in "${runtimes[@]}"; do
    name=$(basename "$(command -v "$runtime")")
    files+=("$workdir/results/$name/summary.tsv")
    header+=$(printf ' %-16s' "$name")
  done
  echo "$header"
  awk -F'\t' '
    FNR == 1 { col++; next }
    { if (!($1 in seen)) { seen[$1] = 1; order[++n] = $1 }; cell[$1, col] = $2 " " $4 "/" $3 }
    END { for (i = 1; i <= n; i++) { line = sprintf("%-40s", order[i])
            for (c = 1; c <= col; c++) line = line sprintf(" %-16s", ((order[i], c) in cell) ? cell[order[i], c] : "-")
            print line } }' "${files[@]}"
fi
echo "results: $workdir/results"
