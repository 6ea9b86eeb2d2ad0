// File storage as the official npm client uses it (Convex's documented browser flow): a mutation
// returns an upload URL, the file is POSTed to it with fetch, its storage id is passed to another
// mutation, and the file is read back by its URL. RIPPLE_URL is set by tests/test_storage.py.
import { test } from "node:test";
import assert from "node:assert/strict";
import { ConvexHttpClient } from "convex/browser";
import { anyApi } from "convex/server";

const url = process.env.RIPPLE_URL;
assert.ok(url, "RIPPLE_URL must be set");

test("upload through a generated URL, attach by storage id, read back by URL", async () => {
  const client = new ConvexHttpClient(url);
  const postUrl = await client.mutation(anyApi.files.upload_url, {});
  const file = new Blob(["a video, pretend"], { type: "video/mp4" });
  const result = await fetch(postUrl, { method: "POST", headers: { "Content-Type": file.type }, body: file });
  assert.equal(result.status, 200);
  const { storageId } = await result.json();
  assert.equal(typeof storageId, "string");

  const attached = await client.mutation(anyApi.files.attach, { name: "clip", file: storageId });
  assert.equal(attached.name, "clip");
  const served = await fetch(attached.url);
  assert.equal(served.status, 200);
  assert.equal(served.headers.get("content-type"), "video/mp4");
  assert.equal(await served.text(), "a video, pretend");

  const doc = await client.query(anyApi.files.doc, { id: storageId });
  assert.equal(doc.size, file.size);
  assert.equal(doc.contentType, "video/mp4");

  // The URL was single-use.
  const again = await fetch(postUrl, { method: "POST", body: "again" });
  assert.equal(again.status, 403);
});
