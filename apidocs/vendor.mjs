// Copies the files the /docs/try page needs from node_modules/swagger-ui-dist (the exact version
// package.json pins and package-lock.json locks) into loacl/static/apidocs/, byte for byte, and
// writes manifest.json there: the package, its version, the lockfile's integrity of the npm
// tarball, and each copied file's SHA-256 and size. tests/test_apidocs.py checks the committed
// files against the manifest and the manifest against package.json and the lockfile.
import { createHash } from "node:crypto";
import { copyFileSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";

const here = new URL(".", import.meta.url).pathname;
const name = "swagger-ui-dist";
const source = `${here}node_modules/${name}/`;
const target = `${here}../loacl/static/apidocs/`;
// The page needs the bundle and its stylesheet; the licence texts go along with them (Apache-2.0
// asks for LICENSE and NOTICE; the bundle's third-party notices are in its .LICENSE.txt).
const FILES = [
  "swagger-ui-bundle.js",
  "swagger-ui.css",
  "LICENSE",
  "NOTICE",
  "swagger-ui-bundle.js.LICENSE.txt",
];

const pinned = JSON.parse(readFileSync(`${here}package.json`, "utf8")).devDependencies[name];
const locked = JSON.parse(readFileSync(`${here}package-lock.json`, "utf8")).packages[`node_modules/${name}`];
const installed = JSON.parse(readFileSync(`${source}package.json`, "utf8")).version;
if (!(pinned === locked.version && locked.version === installed)) {
  throw new Error(`${name}: package.json pins ${pinned}, the lockfile has ${locked.version}, ` +
    `node_modules has ${installed}: run npm ci`);
}

rmSync(target, { recursive: true, force: true });
mkdirSync(target, { recursive: true });
const files = {};
for (const file of FILES) {
  copyFileSync(source + file, target + file);
  const bytes = readFileSync(target + file);
  files[file] = { sha256: createHash("sha256").update(bytes).digest("hex"), bytes: bytes.length };
}
const manifest = { package: name, version: installed, integrity: locked.integrity, files };
writeFileSync(`${target}manifest.json`, JSON.stringify(manifest, null, 2) + "\n");
for (const file of readdirSync(target).sort()) console.log(`loacl/static/apidocs/${file}`);
