#!/usr/bin/env bash
# Builds the JavaScript cell into a component: protocols/echo-js/build.sh [OUT.wasm]
#
# Needs node and npm. Installs the pinned componentize-js (package.json and
# package-lock.json here) with `npm ci` into a directory next to the output, and does
# nothing when OUT.wasm is newer than everything it is built from. Concurrent runs for
# the same output wait for each other. Serve the result with:
#   ww run --cell /ww/echo-js/0.1.0=OUT.wasm
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
wit=$(cd "$here/../../wit" && pwd)
out=${1:-$here/echo-js.wasm}
mkdir -p "$(dirname "$out")"
out=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")

exec 9>"$out.lock"
flock 9
inputs=("$here/app.js" "$here/build.sh" "$here/package.json" "$here/package-lock.json" "$wit")
if [ -e "$out" ] && [ -z "$(find "${inputs[@]}" -newer "$out" -print -quit)" ]; then
    exit 0
fi

# One install per lock file: a changed lock gets a directory of its own. package.json
# also names preview2-shim: componentize-js 0.23.0 imports it without declaring it, and
# `npm ci` leaves out what nothing declares.
tools=$(dirname "$out")/.componentize-js-$(sha256sum "$here/package-lock.json" | cut -c1-12)
if [ ! -x "$tools/node_modules/.bin/componentize-js" ]; then
    rm -rf "$tools"
    mkdir -p "$tools"
    cp "$here/package.json" "$here/package-lock.json" "$tools/"
    npm ci --prefix "$tools" --no-audit --no-fund --loglevel=error
fi
# Without the two --disable flags the component imports wasi:http, which ww does not
# provide.
"$tools/node_modules/.bin/componentize-js" "$here/app.js" --wit "$wit" --world-name cell \
    --disable http fetch-event -o "$out.part"
mv "$out.part" "$out"
