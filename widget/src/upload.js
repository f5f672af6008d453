// Attachments, in the second file (extra.js): each file the visitor picks or drops becomes a chip
// that is checked against the config's `uploads` (extension and size) before it is sent, then
// uploaded with XMLHttpRequest (for its progress events); the chip shows the progress or the
// refusal. What it needs of the first file comes in `ctx` (see main.js).
import { refusal } from "./config.js";
import { element, icon, ICONS } from "./render.js";

export function uploader(ctx) {
  const { t, explain, fileList, input, changed } = ctx;
  const chips = []; // {name, id once uploaded, error, element, progress, bar, note, request}

  function remove(chip) {
    chip.request?.abort();
    chip.element.remove();
    chips.splice(chips.indexOf(chip), 1);
    changed();
    input.focus();
  }

  function refuse(chip, code) {
    chip.error = code;
    chip.progress.remove();
    chip.note.textContent = explain(code);
    changed();
  }

  function progress(chip, percent) {
    chip.bar.style.width = percent + "%";
    chip.progress.setAttribute("aria-valuenow", percent);
  }

  function upload(chip, file) {
    const request = (chip.request = new XMLHttpRequest());
    request.open("POST", ctx.endpoint("/files"));
    request.setRequestHeader("Authorization", "Bearer " + ctx.token());
    request.upload.onprogress = (event) => {
      if (event.lengthComputable) progress(chip, Math.round((100 * event.loaded) / event.total));
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
        changed();
      } else {
        refuse(chip, body?.code || (request.status === 413 ? "file_too_large" : "error"));
      }
    };
    request.onerror = () => refuse(chip, "network");
    const form = new FormData();
    form.append("file", file);
    request.send(form);
  }

  return {
    add(files) {
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
        const refused = refusal(file, ctx.uploads());
        refused ? refuse(chip, refused) : upload(chip, file);
      }
      changed();
    },
    /** Some file is still on its way up: sending must wait. */
    uploading: () => chips.some((chip) => !chip.id && !chip.error),
    uploaded: () => chips.filter((chip) => chip.id),
    clear() {
      for (const chip of chips.splice(0)) chip.element.remove();
    },
  };
}
