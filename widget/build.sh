#!/bin/sh
# Build loacl/static/widget.js (the one file LOACL serves and pip ships) from widget/src/, with
# esbuild (build.mjs). Needs Node.js and npm, only to rebuild; the built file is committed, so
# serving needs neither.
set -eu
cd "$(dirname "$0")"
[ -x node_modules/.bin/esbuild ] || npm ci --no-audit --no-fund --ignore-scripts
node build.mjs
gzip -9 -n -c ../loacl/static/widget.js | wc -c | xargs printf 'loacl/static/widget.js: %s bytes gzipped (tests/test_static.py prints the size as served)\n'
