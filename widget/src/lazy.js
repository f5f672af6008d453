// The second file (extra.js: attachments, the pre-chat form, the comment under a rating), loaded
// once, when first needed, from /widget/extra.<version>.js with the integrity hash the build put
// here (EXTRA_VERSION, EXTRA_INTEGRITY: build.mjs). `ctx` is what it needs of this file; main.js
// fills it.
import { doc, element } from "./render.js";

let loading = null;
let base;
export const ctx = {};
export const useBase = (url) => { base = url; };

// A page that enforces Trusted Types takes a script URL only from a policy it allows by name
// ("trusted-types loacl"); elsewhere the plain string does.
function scriptUrl(url) {
  try {
    return trustedTypes.createPolicy("loacl", { createScriptURL: (same) => same }).createScriptURL(url);
  } catch (error) {
    return url;
  }
}

export function extra() {
  return (loading ||= new Promise((resolve, reject) => {
    if (window.__loaclExtra) return resolve(window.__loaclExtra);
    (doc.head || doc.documentElement).append(element("script", {
      src: scriptUrl(base + "/widget/extra." + EXTRA_VERSION + ".js"), integrity: EXTRA_INTEGRITY,
      crossorigin: "anonymous",
      onload: () => resolve(window.__loaclExtra),
      onerror() {
        loading = null; // tried again next time
        reject(Object.assign(new Error("network"), { code: "network" }));
      },
    }));
  }));
}
