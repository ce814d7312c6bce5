#!/usr/bin/env bash
# Build the Vessel guest kernel (x86_64 bzImage) from Debian's linux-source-6.1
# package and the config fragments in this directory.
#
# usage: kernel-config/build-kernel.sh [--out DIR] [--keep-source] [-j N]
#
#   --out DIR       also copy bzImage and its .config into DIR; KERNEL= then
#                   points at DIR/bzImage
#   --keep-source   keep the extracted/built source tree in the cache
#                   (default: delete it after a successful build)
#   -j N            parallel jobs (default: nproc)
#
# The result is cached in ${VESSEL_CACHE:-/var/cache/vessel}/kernel/<hash>/,
# where <hash> covers the fragment files, this script and the installed
# linux-source package version. A cache hit returns immediately.
# The last line of stdout is always KERNEL=<path to bzImage>.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SCRIPT_PATH="$SCRIPT_DIR/$(basename "${BASH_SOURCE[0]}")"

# Fragments, in merge order. Every option in them is checked strictly.
FRAGMENTS=(base virtio vsock fs security net debug)
# Starting point: tinyconfig. Measured with the same fragments (6.1.192, XZ):
# tinyconfig -> 2,290,688 bytes; allnoconfig -> 2,774,016 bytes, because
# allnoconfig leaves EXPERT off, so VT/VGA console, KALLSYMS, io_uring, INPUT,
# FW_LOADER, DMI, coredumps, SLUB_DEBUG... stay on and cannot be disabled.
BASE_TARGET=tinyconfig
KARCH=x86_64
SRC_PKG=linux-source-6.1
SRC_TARBALL=/usr/src/linux-source-6.1.tar.xz
BUILD_DEPS=(make gcc libc6-dev bc bison flex libelf-dev libssl-dev xz-utils "$SRC_PKG")

OUT_DIR=""
KEEP_SOURCE=0
JOBS=$(nproc)

log() { echo "[build-kernel] $*" >&2; }
die() { echo "[build-kernel] ERROR: $*" >&2; exit 1; }

usage() { sed -n '2,16p' "$SCRIPT_PATH" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
    case $1 in
        --out) [[ $# -ge 2 ]] || die "--out needs a directory"; OUT_DIR=$2; shift 2 ;;
        --out=*) OUT_DIR=${1#--out=}; shift ;;
        --keep-source) KEEP_SOURCE=1; shift ;;
        -j) [[ $# -ge 2 ]] || die "-j needs a number"; JOBS=$2; shift 2 ;;
        -j*) JOBS=${1#-j}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
[[ $JOBS =~ ^[0-9]+$ && $JOBS -ge 1 ]] || die "bad -j value: $JOBS"
# Resolved now: the build below changes directory, and a relative --out must mean the caller's.
if [[ -n $OUT_DIR ]]; then
    mkdir -p "$OUT_DIR"
    OUT_DIR=$(cd "$OUT_DIR" && pwd)
fi
[[ $(uname -m) == x86_64 ]] || die "only x86_64 hosts are supported (no cross toolchain set up)"

for f in "${FRAGMENTS[@]}"; do
    [[ -f $SCRIPT_DIR/$f.config ]] || die "missing fragment $SCRIPT_DIR/$f.config"
done

# --- build dependencies -------------------------------------------------------
missing=()
for p in "${BUILD_DEPS[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    log "installing missing build dependencies: ${missing[*]}"
    [[ $(id -u) -eq 0 ]] || die "need root to apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update >&2
    apt-get install -y --no-install-recommends "${missing[@]}" >&2
fi
[[ -f $SRC_TARBALL ]] || die "$SRC_TARBALL not found (package $SRC_PKG)"
SRC_VERSION=$(dpkg-query -W -f='${Version}' "$SRC_PKG")

# --- cache key ------------------------------------------------------------------
HASH=$(
    {
        echo "script:"; cat "$SCRIPT_PATH"
        for f in "${FRAGMENTS[@]}"; do echo "fragment:$f.config"; cat "$SCRIPT_DIR/$f.config"; done
        echo "source:$SRC_PKG=$SRC_VERSION arch:$KARCH base:$BASE_TARGET"
    } | sha256sum | cut -c1-16
)
CACHE_ROOT=${VESSEL_CACHE:-/var/cache/vessel}/kernel
CACHE_DIR=$CACHE_ROOT/$HASH
mkdir -p "$CACHE_ROOT"

finish() { # $1 = dir with bzImage (cache dir)
    local img=$1/bzImage result size
    result=$img
    if [[ -n $OUT_DIR ]]; then
        cp -f "$img" "$OUT_DIR/bzImage.tmp.$$" && mv -f "$OUT_DIR/bzImage.tmp.$$" "$OUT_DIR/bzImage"
        cp -f "$1/config" "$OUT_DIR/bzImage.config"
        result=$OUT_DIR/bzImage
    fi
    size=$(stat -c %s "$result")
    echo "bzImage: $result"
    awk -v s="$size" 'BEGIN { printf "size: %d bytes (%.2f MB)\n", s, s / 1048576 }'
    echo "KERNEL=$result"
}

# Serialise concurrent builds of the same configuration.
exec 9>"$CACHE_ROOT/$HASH.lock"
flock 9

if [[ -f $CACHE_DIR/bzImage ]]; then
    log "cache hit ($HASH, $SRC_PKG $SRC_VERSION)"
    finish "$CACHE_DIR"
    exit 0
fi

log "cache miss: building $SRC_PKG $SRC_VERSION into $CACHE_DIR"
START=$SECONDS
WORK=$CACHE_DIR/work
SRC=$WORK/$SRC_PKG
mkdir -p "$WORK"

# --- source ---------------------------------------------------------------------
if [[ ! -f $WORK/.extracted ]]; then
    rm -rf "$SRC"
    log "extracting $SRC_TARBALL"
    tar -C "$WORK" -xf "$SRC_TARBALL"
    [[ -d $SRC ]] || die "tarball did not contain $SRC_PKG/"
    touch "$WORK/.extracted"
fi
cd "$SRC"
export KBUILD_BUILD_USER=vessel KBUILD_BUILD_HOST=vessel
MAKE=(make ARCH=$KARCH)

# --- configure ------------------------------------------------------------------
log "make $BASE_TARGET + fragments: ${FRAGMENTS[*]}"
rm -f .config
"${MAKE[@]}" "$BASE_TARGET" >"$CACHE_DIR/config.log" 2>&1 || { tail -20 "$CACHE_DIR/config.log" >&2; die "make $BASE_TARGET failed"; }
frag_paths=()
for f in "${FRAGMENTS[@]}"; do frag_paths+=("$SCRIPT_DIR/$f.config"); done
bash scripts/kconfig/merge_config.sh -m .config "${frag_paths[@]}" >>"$CACHE_DIR/config.log" 2>&1 \
    || { tail -20 "$CACHE_DIR/config.log" >&2; die "merge_config.sh failed"; }
"${MAKE[@]}" olddefconfig >>"$CACHE_DIR/config.log" 2>&1 || { tail -20 "$CACHE_DIR/config.log" >&2; die "make olddefconfig failed"; }

# --- strict check: every requested value must survive olddefconfig ----------------
value_in_config() { # $1 option -> prints y/m/value, "n" for "is not set", "(absent)"
    local line
    line=$(grep -E "^$1=|^# $1 is not set\$" .config | tail -1 || true)
    if [[ -z $line ]]; then echo "(absent)"
    elif [[ $line == "# "* ]]; then echo "n"
    else echo "${line#*=}"; fi
}
bad=0
for f in "${frag_paths[@]}"; do
    lineno=0
    while IFS= read -r line || [[ -n $line ]]; do
        lineno=$((lineno + 1))
        if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
            opt=${BASH_REMATCH[1]}; want=${BASH_REMATCH[2]}
        elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set[[:space:]]*$ ]]; then
            opt=${BASH_REMATCH[1]}; want=n
        else
            continue
        fi
        got=$(value_in_config "$opt")
        # An option whose dependencies are unmet is absent from .config: that is "n".
        [[ $want == n && $got == "(absent)" ]] && continue
        if [[ $got != "$want" ]]; then
            echo "[build-kernel] CONFIG MISMATCH: $opt requested '$want' but final .config has '$got' ($(basename "$f"):$lineno)" >&2
            bad=1
        fi
    done <"$f"
done
if [[ $bad -ne 0 ]]; then
    cp -f .config "$CACHE_DIR/config.rejected"
    die "fragment options did not stick (unmet 'depends on', a 'select' from elsewhere, or a typo); final config saved as $CACHE_DIR/config.rejected"
fi
log "config OK: all options from ${#frag_paths[@]} fragments present in final .config"

# --- build ----------------------------------------------------------------------
BUILD_LOG=$CACHE_DIR/build.log
log "building bzImage with -j$JOBS (full log: $BUILD_LOG)"
set +e
progress() { # one progress line per 250 build steps; errors passed through
    local n=0 line
    while IFS= read -r line; do
        printf '%s\n' "$line" >>"$BUILD_LOG"
        case $line in
            "  "[A-Z]*" "*)
                n=$((n + 1))
                if ((n % 250 == 0)); then
                    log "$n build steps, $((SECONDS - START))s elapsed (last: ${line#"${line%%[! ]*}"})"
                fi ;;
            *error:*|*"Error "[0-9]*) echo "$line" >&2 ;;
        esac
    done
    log "$n build steps total"
}
: >"$BUILD_LOG"
"${MAKE[@]}" -j"$JOBS" bzImage 2>&1 | progress
rc=${PIPESTATUS[0]}
set -e
if [[ $rc -ne 0 ]]; then
    tail -30 "$BUILD_LOG" >&2
    die "kernel build failed (exit $rc); see $BUILD_LOG"
fi
[[ -f arch/x86/boot/bzImage ]] || die "build finished but arch/x86/boot/bzImage is missing"

cp -f .config "$CACHE_DIR/config"
cp -f arch/x86/boot/bzImage "$CACHE_DIR/bzImage.tmp"
mv -f "$CACHE_DIR/bzImage.tmp" "$CACHE_DIR/bzImage"
cd "$CACHE_DIR"
if [[ $KEEP_SOURCE -eq 0 ]]; then
    log "removing source tree (use --keep-source to keep it)"
    rm -rf "$WORK"
fi
log "built in $((SECONDS - START))s"
finish "$CACHE_DIR"
