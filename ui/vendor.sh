#!/bin/sh
# Re-vendor the UI's third-party libraries from the npm registry (run by a developer, never at run time).
#
# The agent serves ui/static/ as it is: no node toolchain is needed to install, run or test Proconsul.
# This script is how those files were made: `npm pack` fetches each package's published tarball,
# and the built ES-module files it already contains are copied in (source-map comments dropped, since
# the maps are not shipped), with each package's licence beside them and the versions in VERSIONS.txt.
#
#   sh ui/vendor.sh                 # the pinned versions below
#   PREACT=11.2.0 sh ui/vendor.sh   # another version (then run the UI tests: tests/ui/)
set -eu
PREACT=${PREACT:-11.2.0}
HTM=${HTM:-3.1.1}
JS_YAML=${JS_YAML:-5.5.0}

here=$(cd "$(dirname "$0")" && pwd)
out="$here/static/assets/vendor"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

fetch() {  # fetch NAME VERSION -> unpacks into $work/NAME
    (cd "$work" && npm pack --silent "$1@$2" >/dev/null)
    mkdir -p "$work/$1"
    tar xzf "$work/$1-$2.tgz" -C "$work/$1" --strip-components=1
}
copy() {  # copy SRC DEST: the file without its sourceMappingURL comment
    sed '/^\/\/# sourceMappingURL=/d' "$1" > "$2"
}

fetch preact "$PREACT"
fetch htm "$HTM"
fetch js-yaml "$JS_YAML"

rm -rf "$out" && mkdir -p "$out/lazy"
copy "$work/preact/dist/preact.mjs" "$out/preact.mjs"              # import "preact"
copy "$work/preact/hooks/dist/hooks.mjs" "$out/preact.hooks.mjs"   # import "preact/hooks"
copy "$work/htm/dist/htm.module.js" "$out/htm.mjs"                 # import "htm"
copy "$work/js-yaml/dist/browser/js-yaml.esm.min.mjs" "$out/lazy/js-yaml.mjs"  # loaded only to check YAML
cp "$work/preact/LICENSE" "$out/LICENSE.preact.txt"
cp "$work/htm/LICENSE" "$out/LICENSE.htm.txt"
cp "$work/js-yaml/LICENSE" "$out/LICENSE.js-yaml.txt"
cat > "$out/VERSIONS.txt" <<TXT
Vendored by ui/vendor.sh from the npm registry (npm pack), built files only.
preact  $PREACT  MIT         dist/preact.mjs, hooks/dist/hooks.mjs
htm     $HTM   Apache-2.0  dist/htm.module.js
js-yaml $JS_YAML   MIT         dist/browser/js-yaml.esm.min.mjs (loaded lazily by the KV editor)
TXT
echo "vendored preact $PREACT, htm $HTM, js-yaml $JS_YAML into $out"
