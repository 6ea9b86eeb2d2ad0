// The Files section: stored files (`_storage`, newest first, live), each with its size, type,
// creation time and, for images and videos, a preview from its URL; upload (an upload URL from
// `_system/dashboard:generateUploadUrl`, then the file POSTed to it with its Content-Type, as a
// Convex client does) and delete.

import { confirmButton, errorText, fill, formatBytes, formatTime, h, showError } from "./dom.js";

const PAGE_SIZE = 20;

/** A URL of this server's storage endpoints, on the origin the page was loaded from. The server
 * builds its URLs from the address it knows itself by (127.0.0.1 under `ripple dev --host
 * 0.0.0.0`), which a phone on the network cannot reach; the page's own origin it can. Other
 * URLs (a proxy's public URL with a path of its own) are left as they are. */
export function sameOrigin(url) {
  const parsed = new URL(url, location.href);
  return parsed.pathname.startsWith("/api/storage/") ? `${location.origin}${parsed.pathname}${parsed.search}` : url;
}

function preview(file) {
  const type = file.contentType ?? "";
  if (!file.url) return h("span", { class: "muted" }, "—");
  if (type.startsWith("image/")) {
    return h("img", { src: sameOrigin(file.url), alt: `preview of ${file._id}`, loading: "lazy", class: "preview", testid: "file-preview" });
  }
  if (type.startsWith("video/")) {
    return h("video", { src: sameOrigin(file.url), controls: true, muted: true, preload: "metadata", playsinline: true,
                        class: "preview", testid: "file-preview" });
  }
  return h("a", { href: sameOrigin(file.url), target: "_blank", rel: "noopener" }, "open");
}

export function mount({ client }, container) {
  const input = h("input", { type: "file", testid: "upload-input", "aria-label": "File to upload" });
  const upload = h("button", { type: "submit", testid: "upload-submit" }, "Upload");
  const uploadState = h("p", { class: "hint", testid: "upload-state", role: "status", hidden: true });
  const error = h("p", { class: "error", testid: "files-error", role: "alert", hidden: true });
  const rows = h("tbody", { testid: "file-rows" });
  const more = h("button", { type: "button", class: "secondary", testid: "files-more", hidden: true }, "Load more");
  const form = h("form", { class: "upload-form", testid: "upload-form" }, input, upload);
  fill(container,
    h("h2", {}, "Files"), form, uploadState, error,
    h("div", { class: "scroll-x" }, h("table", { class: "docs" },
      h("thead", {}, h("tr", {}, ["Preview", "Storage id", "Size", "Type", "Created", ""].map((c) => h("th", {}, c)))),
      rows)),
    h("div", { class: "more" }, more));

  async function send(file) {
    upload.disabled = true;
    showError(error, null);
    uploadState.hidden = false;
    uploadState.textContent = `Uploading ${file.name} (${formatBytes(file.size)})…`;
    try {
      const url = await client.mutation("_system/dashboard:generateUploadUrl", {});
      const response = await fetch(sameOrigin(url), { method: "POST", headers: { "Content-Type": file.type || "application/octet-stream" },
                                          body: file });
      const text = await response.text();
      let body = null;
      try {
        body = JSON.parse(text);
      } catch {
        body = null;
      }
      if (!response.ok || !body?.storageId) {
        throw new Error(`the upload was refused (${response.status}): ${body?.message ?? text.slice(0, 300)}`);
      }
      uploadState.textContent = `Uploaded ${file.name} as ${body.storageId}.`;
      input.value = "";
    } catch (e) {
      uploadState.hidden = true;
      showError(error, `Upload failed: ${errorText(e)}`);
    } finally {
      upload.disabled = false;
    }
  }

  async function remove(storageId) {
    try {
      await client.mutation("_system/dashboard:deleteFile", { storageId });
    } catch (e) {
      showError(error, e);
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const file = input.files?.[0];
    if (!file) {
      showError(error, "Choose a file to upload first.");
      return;
    }
    void send(file);
  });

  const page = client.onPaginatedUpdate("_system/dashboard:files", {}, { initialNumItems: PAGE_SIZE }, ({ results, status }) => {
    fill(rows, results.map((file) => h("tr", { testid: "file-row", dataset: { id: file._id, contentType: file.contentType ?? "" } },
      h("td", {}, preview(file)),
      h("td", {}, h("code", { class: "wrap" }, file._id)),
      h("td", {}, formatBytes(file.size)),
      h("td", {}, file.contentType ?? "—"),
      h("td", {}, formatTime(file._creationTime)),
      h("td", {}, confirmButton("Delete", "Really delete?", () => void remove(file._id), { testid: "file-delete" })))));
    if (results.length === 0) {
      fill(rows, h("tr", {}, h("td", { colspan: 6, class: "hint" }, status === "LoadingFirstPage" ? "Loading…" : "No files stored.")));
    }
    more.hidden = status === "Exhausted";
    more.disabled = status !== "CanLoadMore";
  }, (e) => showError(error, e));
  more.addEventListener("click", () => page.loadMore(PAGE_SIZE));
  return () => page.unsubscribe();
}
