// Attachments: the attach button, or files dropped onto the panel. Each file becomes a chip that
// is checked against the config's `uploads` (extension and size) before it is sent, then uploaded
// with XMLHttpRequest (for its progress events); the chip shows the progress or the refusal.
import { endpoint, token } from "./api.js";
import { refusal, uploads } from "./config.js";
import { explain, t } from "./i18n.js";
import { element, icon, ICONS } from "./render.js";
import { dropZone, fileList, input, panel, picker } from "./view.js";

const chips = []; // {name, id once uploaded, error, element, progress, bar, note, request}
let canAttach; // whether files may be added now
let onChange; // called after any chip changes

export function initUploads(allowed, changed) {
  canAttach = allowed;
  onChange = changed;
}

/** Some file is still on its way up: sending must wait. */
export const uploading = () => chips.some((chip) => !chip.id && !chip.error);
export const uploaded = () => chips.filter((chip) => chip.id);
export function clearChips() {
  for (const chip of chips.splice(0)) chip.element.remove();
}

function add(files) {
  if (!canAttach()) return;
  for (const file of files) {
    const chip = { name: file.name };
    chip.bar = element("i");
    chip.note = element("span", { cls: "e", role: "alert" });
    chip.progress = element("div", {
      cls: "pg", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": "0",
      "aria-label": t("uploading") + " " + file.name,
    }, [chip.bar]);
    const removeButton = element("button", {
      type: "button", "aria-label": t("remove") + " " + file.name, onclick: () => remove(chip),
    }, [icon(ICONS.close)]);
    chip.element = element("div", { cls: "c", role: "listitem" }, [
      element("span", {}, [element("b", { text: file.name }), removeButton]), chip.progress, chip.note,
    ]);
    chips.push(chip);
    fileList.append(chip.element);
    const refused = refusal(file, uploads);
    if (refused) refuse(chip, refused);
    else upload(chip, file);
  }
  onChange();
}

function remove(chip) {
  if (chip.request) chip.request.abort();
  chip.element.remove();
  chips.splice(chips.indexOf(chip), 1);
  onChange();
  input.focus();
}

function refuse(chip, code) {
  chip.error = code;
  chip.progress.remove();
  chip.note.textContent = explain(code);
  onChange();
}

function progress(chip, percent) {
  chip.bar.style.width = percent + "%";
  chip.progress.setAttribute("aria-valuenow", percent);
}

function upload(chip, file) {
  const request = (chip.request = new XMLHttpRequest());
  request.open("POST", endpoint("/files"));
  request.setRequestHeader("Authorization", "Bearer " + token);
  request.upload.onprogress = (event) => {
    if (!event.lengthComputable) return;
    progress(chip, Math.round((100 * event.loaded) / event.total));
  };
  request.onload = () => {
    let body = null;
    try {
      body = JSON.parse(request.responseText);
    } catch (error) {
      // no body
    }
    if (request.status === 201 && body?.id) {
      chip.id = body.id;
      progress(chip, 100);
      chip.progress.setAttribute("aria-label", t("uploaded") + " " + chip.name);
      chip.element.setAttribute("data-state", "done");
      onChange();
    } else {
      refuse(chip, body?.code || (request.status === 413 ? "file_too_large" : "error"));
    }
  };
  request.onerror = () => refuse(chip, "network");
  const form = new FormData();
  form.append("file", file);
  request.send(form);
}

picker.addEventListener("change", () => {
  add([...picker.files]);
  picker.value = "";
});
const carriesFiles = (event) => event.dataTransfer && [...event.dataTransfer.types].includes("Files");
panel.addEventListener("dragover", (event) => {
  if (!carriesFiles(event) || !canAttach()) return;
  event.preventDefault();
  dropZone.hidden = false;
});
panel.addEventListener("dragleave", (event) => {
  if (!panel.contains(event.relatedTarget)) dropZone.hidden = true;
});
panel.addEventListener("drop", (event) => {
  if (!carriesFiles(event)) return;
  event.preventDefault();
  dropZone.hidden = true;
  add([...event.dataTransfer.files]);
});
