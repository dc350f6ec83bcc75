#!/bin/sh
# Build the Debian package from this tree without touching it, then run lintian.
#
# Usage: dist/build-deb.sh [--ref REF] OUTDIR [VERSION]
#
# The working tree (tracked and untracked-but-not-ignored files, i.e. what
# "git status" shows, edits included), or with --ref the commit REF exactly
# (git archive: a shared tree with edits in progress), is copied to a temporary directory and
# built there with dpkg-buildpackage -us -uc -b, so no obj-*/ or debian/
# artefact lands in the tree and nothing is written next to it (dpkg-buildpackage
# puts the .deb in the parent directory). OUTDIR receives the .deb, .buildinfo,
# .changes and lintian.txt. VERSION (e.g. 0.1.1) adds a changelog entry to the
# copy first: the install test builds its "upgrade" package that way.
# Exit status: 0 built and lintian reported no error, 1 otherwise.
set -eu
ref=
if [ "${1:-}" = "--ref" ]; then
	ref=${2:?--ref needs a commit}
	shift 2
fi
[ $# -ge 1 ] || { echo "usage: $0 [--ref REF] OUTDIR [VERSION]" >&2; exit 2; }
out=$(realpath -m "$1")
version=${2:-}
top=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
work=$(mktemp -d /tmp/dotspool-deb.XXXXXX)
trap 'rm -rf "$work"' EXIT INT TERM
src="$work/dotspool"
mkdir -p "$src"
if [ -n "$ref" ]; then
	(cd "$top" && git archive --format=tar "$ref") | tar -C "$src" -xf -
	# DS_DEB_OVERLAY="debian dist": these paths from the working tree over the commit
	# (packaging work on top of a known-good tree).
	for p in ${DS_DEB_OVERLAY:-}; do
		rm -rf "${src:?}/$p"
		(cd "$top" && tar -cf - "$p") | tar -C "$src" -xf -
	done
elif ! git -C "$top" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
	# Not a git tree (an exported snapshot, as tests/dist/install_test.sh makes): all of it.
	tar -C "$top" --exclude='./obj-*' --exclude='./build*' -cf - . | tar -C "$src" -xf -
else
	(cd "$top" && git ls-files -z --cached --others --exclude-standard) |
		(cd "$top" && xargs -0 sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh) |
		(cd "$top" && tar --null -T - -cf -) | tar -C "$src" -xf -
fi
if [ -n "$version" ]; then
	# A new top entry, as dch would write it (dch needs devscripts).
	{
		printf 'dotspool (%s) unstable; urgency=medium\n\n' "$version"
		printf '  * Rebuilt with a new version (dist/build-deb.sh).\n\n'
		printf ' -- dotspool developers <dotspool-dev@lists.example.org>  %s\n\n' "$(date -R)"
		cat "$src/debian/changelog"
	} >"$src/debian/changelog.new"
	mv "$src/debian/changelog.new" "$src/debian/changelog"
fi
start=$(date +%s)
(cd "$src" && DEB_BUILD_OPTIONS="${DEB_BUILD_OPTIONS:-parallel=2}" dpkg-buildpackage -us -uc -b) >"$out/build.log" 2>&1 || {
	tail -40 "$out/build.log" >&2
	echo "dist/build-deb.sh: dpkg-buildpackage failed (log: $out/build.log)" >&2
	exit 1
}
echo "dist/build-deb.sh: dpkg-buildpackage took $(($(date +%s) - start)) s"
for f in "$work"/*.deb "$work"/*.buildinfo "$work"/*.changes; do
	[ -e "$f" ] && cp "$f" "$out/"
done
deb=$(ls "$work"/dotspool_*.deb)
# Lintian on the binary package; --fail-on error: warnings are reported (and
# overridden with a reason in debian/dotspool.lintian-overrides), errors fail.
rc=0
lintian --fail-on error --display-info --pedantic --show-overrides --tag-display-limit 0 "$deb" >"$out/lintian.txt" 2>&1 || rc=1
echo "dist/build-deb.sh: $(basename "$deb") built; lintian: $(grep -c '^E:' "$out/lintian.txt" || true) errors, $(grep -c '^W:' "$out/lintian.txt" || true) warnings, $(grep -c '^I:' "$out/lintian.txt" || true) info, $(grep -c "^O:" "$out/lintian.txt" || true) overridden (with a reason in debian/dotspool.lintian-overrides)"
cat "$out/lintian.txt"
exit $rc
