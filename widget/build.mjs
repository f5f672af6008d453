// Bundles src/main.js and the modules it imports into one IIFE with esbuild (src/styles.css
// minified and inlined as a string), then minifies it with terser, whose compressor and toplevel
// mangling beat esbuild's minifier by about 250 bytes gzipped, into loacl/static/widget.js.
// src/extra.js (what few visitors use: attachments, the pre-chat form, the rating's comment) is
// built first, the same way, into loacl/static/widget-extra.js; its version (the first 16 hex
// digits of its SHA-256, as the server computes it) and its SHA-384 integrity hash are built into
// widget.js (EXTRA_VERSION, EXTRA_INTEGRITY), which loads it on demand.
// The banner records the first 16 hex digits of the sources' SHA-256 (sourceHash below), enough to
// tell a stale build and about 40 bytes gzipped cheaper than all 64; tests/test_static.py computes the
// same hash.
import { createHash } from "node:crypto";
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import * as esbuild from "esbuild";
import { minify } from "terser";

const here = new URL(".", import.meta.url).pathname;
const output = here + "../loacl/static/widget.js";
const extraOutput = here + "../loacl/static/widget-extra.js";

/** For each file in src/, by name: "src/<name>\n<length in bytes>\n<bytes>". */
function sourceHash() {
  const hash = createHash("sha256");
  for (const name of readdirSync(here + "src").sort()) {
    const bytes = readFileSync(here + "src/" + name);
    hash.update(`src/${name}\n${bytes.length}\n`).update(bytes);
  }
  return hash.digest("hex");
}

const minifiedCss = {
  name: "minified-css",
  setup(build) {
    build.onLoad({ filter: /\.css$/ }, async (args) => {
      const css = await esbuild.transform(readFileSync(args.path, "utf8"), { loader: "css", minify: true });
      return { contents: css.code.trim(), loader: "text" };
    });
  },
};

const banner = `/* LOACL widget, built from widget/src sha256:${sourceHash().slice(0, 16)} */`;

async function build(entry, define) {
  const bundled = await esbuild.build({
    entryPoints: [here + "src/" + entry],
    bundle: true,
    format: "iife",
    minifySyntax: true, // terser does the rest
    target: "es2020",
    charset: "utf8",
    legalComments: "none",
    plugins: [minifiedCss],
    define,
    write: false,
    logLevel: "warning",
  });
  const minified = await minify(bundled.outputFiles[0].text, {
    ecma: 2020,
    toplevel: true, // the IIFE is the whole program: every name in it may be renamed or dropped
    compress: { passes: 3, unsafe_arrows: true, unsafe_methods: true, pure_getters: true, toplevel: true },
    mangle: { toplevel: true },
    format: { ascii_only: false, comments: false, preamble: banner },
  });
  return minified.code + "\n";
}

const extra = await build("extra.js", {});
writeFileSync(extraOutput, extra);
const extraBytes = Buffer.from(extra);
writeFileSync(output, await build("main.js", {
  EXTRA_VERSION: JSON.stringify(createHash("sha256").update(extraBytes).digest("hex").slice(0, 16)),
  EXTRA_INTEGRITY: JSON.stringify("sha384-" + createHash("sha384").update(extraBytes).digest("base64")),
}));
