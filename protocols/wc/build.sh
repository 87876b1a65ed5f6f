#!/usr/bin/env bash
# Builds the Python cell into a component: protocols/wc/build.sh [OUT.wasm]
#
# Needs componentize-py (pinned below); installs it into a virtualenv next to the
# output if it is not on PATH. Serve the result with:
#   ww run --cell /ww/wc/0.1.0=OUT.wasm
set -euo pipefail
VERSION=0.25.1
here=$(cd "$(dirname "$0")" && pwd)
wit=$(cd "$here/../../wit" && pwd)
out=${1:-$here/wc.wasm}
out=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")

componentize=componentize-py
if ! command -v componentize-py >/dev/null || [ "$(componentize-py --version)" != "componentize-py $VERSION" ]; then
    venv=$(dirname "$out")/.componentize-py-$VERSION
    if [ ! -x "$venv/bin/componentize-py" ]; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet "componentize-py==$VERSION"
    fi
    componentize=$venv/bin/componentize-py
fi
cd "$here"
"$componentize" -d "$wit" -w cell componentize app -o "$out"
