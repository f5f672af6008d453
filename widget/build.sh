#!/bin/sh
# Minify widget/widget.js into loacl/static/widget.js (the file LOACL serves and pip ships).
# Needs Node.js and npm, only to rebuild; the built file is committed, so serving needs neither.
# The banner records the source's SHA-256; tests/test_static.py fails when they differ.
set -eu
cd "$(dirname "$0")"
[ -x node_modules/.bin/esbuild ] || npm ci --no-audit --no-fund --ignore-scripts
hash=$(sha256sum widget.js | cut -c1-64)
node_modules/.bin/esbuild widget.js --minify --target=es2020 --charset=utf8 --legal-comments=none \
    "--banner:js=/* LOACL widget, built from widget/widget.js sha256:$hash */" \
    --outfile=../loacl/static/widget.js --log-level=warning
gzip -9 -n -c ../loacl/static/widget.js | wc -c | xargs printf 'loacl/static/widget.js: %s bytes gzipped\n'
