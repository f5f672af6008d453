#!/bin/sh
# Build loacl/static/console/ (what LOACL serves at /console/ and pip ships) from console/src/,
# with esbuild (build.mjs). Needs Node.js and npm, only to rebuild; the built files are committed,
# so serving needs neither.
set -eu
cd "$(dirname "$0")"
[ -x node_modules/.bin/esbuild ] || npm ci --no-audit --no-fund --ignore-scripts
node build.mjs
