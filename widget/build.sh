#!/bin/sh
# Build loacl/static/widget.js and widget-extra.js (the files LOACL serves and pip ships) from
# widget/src/, with esbuild (build.mjs), and print their gzipped sizes. Needs Node.js and npm,
# only to rebuild; the built files are committed, so serving needs neither.
set -eu
cd "$(dirname "$0")"
[ -x node_modules/.bin/esbuild ] || npm ci --no-audit --no-fund --ignore-scripts
node build.mjs
for name in widget widget-extra; do
  gzip -9 -n -c ../loacl/static/$name.js | wc -c |
    xargs printf "loacl/static/$name.js: %s bytes gzipped (tests/test_static.py prints the sizes as served)\n"
done
