#!/bin/sh
# Copy the pinned Swagger UI dist files LOACL serves at /docs/try into loacl/static/apidocs/ and
# record their SHA-256 in its manifest.json (vendor.mjs). Needs Node.js and npm, only to update;
# the copied files are committed, so serving needs neither. Install scripts stay off: the one
# dependency of swagger-ui-dist that has one (@scarf/scarf) only reports the install to its
# vendor; SCARF_ANALYTICS=false says no as well, should scripts be turned on.
set -eu
cd "$(dirname "$0")"
export SCARF_ANALYTICS=false
npm ci --no-audit --no-fund --ignore-scripts
node vendor.mjs
