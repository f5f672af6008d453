// Bundles src/main.js and the modules it imports into one minified IIFE, loacl/static/widget.js,
// with src/styles.css minified and inlined as a string. The banner records the SHA-256 of the
// sources (sourceHash below); tests/test_static.py computes the same hash to tell a stale build.
import { createHash } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import * as esbuild from "esbuild";

const here = new URL(".", import.meta.url).pathname;
const output = here + "../loacl/static/widget.js";

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

await esbuild.build({
  entryPoints: [here + "src/main.js"],
  bundle: true,
  format: "iife",
  minify: true,
  target: "es2020",
  charset: "utf8",
  legalComments: "none",
  banner: { js: `/* LOACL widget, built from widget/src sha256:${sourceHash()} */` },
  plugins: [minifiedCss],
  outfile: output,
  logLevel: "warning",
});
