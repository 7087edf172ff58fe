#!/usr/bin/env bash
# Builds the Debian packages of the order system from this tree (debian/:
# debhelper, dh with CMake) and checks them with lintian. Installs its own
# build dependencies first (as root, without recommends). Run as root or as a
# user who can build; the packages land in --out (default <root>/.run/packages).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
    cat <<USAGE
Usage: $(basename "$0") [--out DIR] [--version V] [-j N] [--no-lintian] [--help]

Builds orders-common, order-service, payment-service, inventory-service,
orderctl and orders-bench (.deb) from the tree with dpkg-buildpackage, then
runs lintian on them: an error fails the build, warnings are printed.

The version is the project's (project(... VERSION) in CMakeLists.txt); it must
match the top entry of debian/changelog (add one with the same version when you
raise it).

  --out DIR      where the .deb, .buildinfo, .changes and lintian.txt go
                 (default .run/packages; emptied of older packages first)
  --version V    build version V instead (numeric, higher than the tree's: a
                 test build for upgrades): set in a copy of CMakeLists.txt and
                 a changelog entry of the copy, never in the tree
  -j N           parallel build jobs (default: the number of CPUs)
  --no-lintian   skip lintian
  --help         this text

Prints the paths of the packages, one a line, on stdout.
USAGE
}

OUT="$ROOT/.run/packages"
VERSION=""
JOBS="$(nproc)"
LINTIAN=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) OUT="${2:?--out needs a folder}"; shift 2 ;;
        --version) VERSION="${2:?--version needs a version}"; shift 2 ;;
        -j) JOBS="${2:?-j needs a number}"; shift 2 ;;
        -j[0-9]*) JOBS="${1#-j}"; shift ;;
        --no-lintian) LINTIAN=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "package.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
die() { echo "package.sh: $*" >&2; exit 1; }
info() { echo "package.sh: $*" >&2; }
[[ "$JOBS" =~ ^[1-9][0-9]*$ ]] || die "-j needs a positive number"

tree_version="$(sed -n 's/^project(event-driven-orders VERSION \([0-9.]*\).*/\1/p' "$ROOT/CMakeLists.txt")"
[[ -n "$tree_version" ]] || die "no project(... VERSION x.y.z) in CMakeLists.txt"
changelog_version="$(dpkg-parsechangelog -l "$ROOT/debian/changelog" -S Version 2>/dev/null ||
                     sed -n '1s/^[^(]*(\([^)]*\)).*/\1/p' "$ROOT/debian/changelog")"
[[ "$changelog_version" == "$tree_version" ]] ||
    die "debian/changelog is at $changelog_version but CMakeLists.txt at $tree_version: add a changelog entry for $tree_version"
if [[ -n "$VERSION" ]]; then
    [[ "$VERSION" =~ ^[0-9]+(\.[0-9]+){0,3}$ ]] || die "--version must be numeric (CMake's x.y.z[.t])"
    dpkg --compare-versions "$VERSION" gt "$tree_version" ||
        die "--version $VERSION is not higher than the tree's $tree_version"
else
    VERSION="$tree_version"
fi

# Build dependencies: the tools, then whatever debian/control's Build-Depends
# still lack (dpkg-checkbuilddeps names them).
"$ROOT/deploy/install-deps.sh" --packaging >&2
if ! unmet="$(cd "$ROOT" && dpkg-checkbuilddeps 2>&1)"; then
    names="$(sed -n 's/.*Unmet build dependencies: //p' <<<"$unmet" | sed 's/([^)]*)//g; s/|[^ ]*//g')"
    [[ -n "$names" ]] || die "dpkg-checkbuilddeps: $unmet"
    [[ $(id -u) == 0 ]] || die "missing build dependencies ($names); run as root to install them"
    info "installing build dependencies: $names"
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=300 \
        --no-install-recommends $names >&2
fi

# A clean copy of the tree (tracked and untracked-but-not-ignored files): the
# build never writes into the work tree, and build/ and .run/ stay out.
WORK="$ROOT/.run/package-build/$VERSION"
SRC="$WORK/event-driven-orders-$VERSION"
rm -rf "$WORK"
mkdir -p "$SRC"
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard |
        xargs -0 -r sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh |
        tar --null -T - -cf -) | tar -xf - -C "$SRC"
else
    tar -C "$ROOT" --exclude=./build --exclude=./.run --exclude=./.git -cf - . | tar -xf - -C "$SRC"
fi
if [[ "$VERSION" != "$tree_version" ]]; then
    sed -i "s/^project(event-driven-orders VERSION [0-9.]*/project(event-driven-orders VERSION $VERSION/" \
        "$SRC/CMakeLists.txt"
    {
        echo "event-driven-orders ($VERSION) unstable; urgency=medium"
        echo
        echo "  * Test build of $tree_version as $VERSION (deploy/package.sh --version)."
        echo
        echo " -- $(sed -n 's/^Maintainer: //p' "$SRC/debian/control")  $(date -R)"
        echo
        cat "$SRC/debian/changelog"
    } >"$SRC/debian/changelog.new"
    mv "$SRC/debian/changelog.new" "$SRC/debian/changelog"
fi

info "building $VERSION in $SRC (-j$JOBS)"
log="$WORK/build.log"
start=$SECONDS
if ! (cd "$SRC" && DEB_BUILD_OPTIONS="parallel=$JOBS nocheck" \
        dpkg-buildpackage -b -us -uc --no-sign) >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    die "dpkg-buildpackage failed (log: $log)"
fi
info "built in $((SECONDS - start)) s (log: $log)"

mkdir -p "$OUT"
rm -f "$OUT"/*.deb "$OUT"/*.changes "$OUT"/*.buildinfo "$OUT/lintian.txt"
mv "$WORK"/*.deb "$WORK"/*.changes "$WORK"/*.buildinfo "$OUT"/
changes="$(ls "$OUT"/*.changes)"

if [[ $LINTIAN == 1 ]]; then
    # Errors fail; warnings (and the reasons they stay) are in deploy/README.md.
    if ! lintian --fail-on error --tag-display-limit 0 "$changes" >"$OUT/lintian.txt" 2>&1; then
        cat "$OUT/lintian.txt" >&2
        die "lintian found errors"
    fi
    if [[ -s "$OUT/lintian.txt" ]]; then
        info "lintian (no errors):"
        sed 's/^/    /' "$OUT/lintian.txt" >&2
    else
        info "lintian: clean"
    fi
fi
ls "$OUT"/*.deb
