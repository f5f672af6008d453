// Bundles the console (src/main.tsx and what it imports, src/styles.css) and the widget preview
// page's script (src/preview.ts) with esbuild into loacl/static/console/: index.html and
// preview.html (from src/*.html) and assets/<name>-<hash>.js|css, names that change with their
// content so the server can cache them for good. index.html's first line records the first 16
// hex digits of the sources' SHA-256 (sourceHash below); tests/test_console.py computes the same
// and fails when the committed build is stale. Also copies axe-core's axe.min.js into tests/data/
// for the accessibility scan, and prints the first load's gzipped size against its budget.
import { createHash } from "node:crypto";
import { copyFileSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { gzipSync } from "node:zlib";
import * as esbuild from "esbuild";

const here = new URL(".", import.meta.url).pathname;
const root = here + "../";
const output = root + "loacl/static/console/";
const BUDGET = 60 * 1024; // the first load, JS + CSS gzipped (tests/test_console.py checks it too)

/** Files under `folder` (relative to the repository), sorted by path. */
function files(folder) {
  const found = [];
  for (const name of readdirSync(root + folder)) {
    const path = `${folder}/${name}`;
    if (statSync(root + path).isDirectory()) found.push(...files(path));
    else found.push(path);
  }
  return found;
}

/** The sources: console/src/**, the pinned packages, and the widget's markdown parser the console reuses. Each as
 * "<path>\n<length in bytes>\n<bytes>", by path. */
export function sources() {
  return [...files("console/src"), "console/package-lock.json", "widget/src/markdown.js"].sort();
}

function sourceHash() {
  const hash = createHash("sha256");
  for (const path of sources()) {
    const bytes = readFileSync(root + path);
    hash.update(`${path}\n${bytes.length}\n`).update(bytes);
  }
  return hash.digest("hex");
}

/** Every language has every key, and every t("key") names one. */
function checkStrings() {
  const table = readFileSync(here + "src/strings.ts", "utf8");
  const keysOf = (name) => {
    const block = table.split(new RegExp(`^const ${name}[^{]*\\{`, "m"))[1].split(/^};/m)[0];
    return new Set([...block.matchAll(/^\s+(\w+):/gm)].map((m) => m[1]));
  };
  const en = keysOf("en");
  const problems = [];
  for (const lang of ["fr", "ar"]) {
    const keys = keysOf(lang);
    for (const key of en) if (!keys.has(key)) problems.push(`${lang} lacks ${key}`);
    for (const key of keys) if (!en.has(key)) problems.push(`${lang} has ${key}, English does not`);
  }
  for (const path of files("console/src").filter((p) => /\.tsx?$/.test(p))) {
    for (const m of readFileSync(root + path, "utf8").matchAll(/\bt\("(\w+)"/g)) {
      if (!en.has(m[1])) problems.push(`${path}: t("${m[1]}") is not in strings.ts`);
    }
  }
  if (problems.length) throw new Error("strings.ts:\n  " + problems.join("\n  "));
}

checkStrings();
rmSync(output, { recursive: true, force: true });
mkdirSync(output + "assets", { recursive: true });
const built = await esbuild.build({
  entryPoints: { app: here + "src/main.tsx", preview: here + "src/preview.ts" },
  outdir: output + "assets",
  entryNames: "[name]-[hash]",
  bundle: true,
  minify: true,
  format: "iife",
  target: "es2020",
  charset: "utf8",
  legalComments: "none", // the licences are in assets/THIRD_PARTY.txt
  jsx: "automatic",
  jsxImportSource: "preact",
  metafile: true,
  write: true,
  logLevel: "warning",
});

const named = {};
for (const [path, meta] of Object.entries(built.metafile.outputs)) {
  const name = path.split("/").pop();
  const entry = meta.entryPoint || "";
  if (name.endsWith(".css")) named.css = name;
  else if (entry.endsWith("main.tsx")) named.js = name;
  else if (entry.endsWith("preview.ts")) named.preview = name;
}
const fill = (template) => readFileSync(here + "src/" + template, "utf8")
  .replace(/\{\{(\w+)\}\}/g, (_, key) => `/console/assets/${named[key]}`);
const banner = `<!-- LOACL console, built from console/src sha256:${sourceHash().slice(0, 16)} -->\n`;
writeFileSync(output + "index.html", banner + fill("index.html"));
writeFileSync(output + "preview.html", fill("preview.html"));
writeFileSync(output + "assets/THIRD_PARTY.txt",
  "The console bundles Preact (https://preactjs.com):\n\n" + readFileSync(here + "node_modules/preact/LICENSE", "utf8"));

mkdirSync(root + "tests/data", { recursive: true });
copyFileSync(here + "node_modules/axe-core/axe.min.js", root + "tests/data/axe.min.js");

const gz = (name) => gzipSync(readFileSync(output + "assets/" + name), { level: 9 }).length;
const first = gz(named.js) + gz(named.css);
console.log(`console first load: ${named.js} ${gz(named.js)} + ${named.css} ${gz(named.css)} = ${first} bytes gzipped (budget ${BUDGET})`);
if (first > BUDGET) {
  console.error("over the budget");
  process.exit(1);
}
