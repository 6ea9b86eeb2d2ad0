// The example app's demo page: creators upload videos for campaigns and follow their review live,
// reviewers create campaigns and work through the review queue. Plain ES modules, no build step:
// it runs on Ripple's JavaScript SDK, which `ripple dev` serves at /_ripple/sdk/ (docs/js-sdk.md),
// and signs in with the dev server's own token issuer (/_ripple/dev-auth/token). What the page
// calls is docs/example-app.md's function list; its data-testid hooks are listed there too.
//
// URL parameters: `pageSize` (default 10) is how many videos a list page holds and how many
// "Load more" adds.

import { ConvexError, RippleClient } from "/_ripple/sdk/ripple.js";

const params = new URLSearchParams(location.search);
const PAGE_SIZE = boundedInt(params.get("pageSize"), 10, 1, 100);
const SESSION_KEY = "ripple-demo-user"; // per tab, so two tabs can be two users
const TOKEN_SECONDS = 3600;
const SEARCH_DELAY_MS = 200; // the review queue searches once typing pauses this long

// The SDK's own errors (a refused token, say) go to the console; the last one is kept to say
// why a sign-in did not take.
let lastClientError = "";
const logger = {
  log: (...args) => console.log(...args),
  info: (...args) => console.info(...args),
  debug: (...args) => console.debug(...args),
  warn: (...args) => console.warn(...args),
  error: (...args) => {
    lastClientError = args.map((a) => (a instanceof Error ? a.message : String(a))).join(" ");
    console.error(...args);
  },
};

const client = new RippleClient(location.origin, { logger });

// ---- small helpers -------------------------------------------------------------------------

function boundedInt(raw, fallback, min, max) {
  const n = Number.parseInt(raw ?? "", 10);
  return Number.isFinite(n) ? Math.min(max, Math.max(min, n)) : fallback;
}

/** The element with `data-testid` = `id` under `root`. */
function $(id, root = document) {
  return root.querySelector(`[data-testid="${id}"]`);
}

/** What to tell the user about a failure: a ConvexError's `message` (the app raises
 * `ConvexError({"code": ..., "message": ...})`), else the error's own message. */
function errorText(error) {
  if (error instanceof ConvexError) {
    const data = error.data;
    if (typeof data === "string") return data;
    if (data !== null && typeof data === "object" && typeof data.message === "string") return data.message;
    return JSON.stringify(data);
  }
  return error instanceof Error ? error.message : String(error);
}

/** Show `error` (an Error or text) in the inline error element `el`, or hide it when null. */
function showError(el, error) {
  el.hidden = error === null || error === undefined || error === "";
  el.textContent = el.hidden ? "" : typeof error === "string" ? error : errorText(error);
}

const STATUS_LABELS = {
  uploaded: "uploaded",
  processing: "processing",
  under_review: "under review",
  approved: "approved",
  changes_needed: "changes needed",
  rejected: "rejected",
  failed: "failed",
};

function formatDuration(seconds) {
  if (typeof seconds !== "number" || !Number.isFinite(seconds)) return "";
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const whole = Math.round(seconds);
  return `${Math.floor(whole / 60)}:${String(whole % 60).padStart(2, "0")}`;
}

function formatTime(ms) {
  return typeof ms === "number" ? new Date(ms).toLocaleString() : "";
}

/** Upload `file` to a storage upload URL with XMLHttpRequest (fetch cannot report upload
 * progress); `onProgress(fraction)` as bytes go out. Resolves with the file's storage id. */
function uploadFile(url, file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", url);
    if (file.type) xhr.setRequestHeader("Content-Type", file.type);
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable && event.total > 0) onProgress(event.loaded / event.total);
    });
    xhr.addEventListener("load", () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        // not JSON: reported below
      }
      if (xhr.status >= 200 && xhr.status < 300 && typeof body?.storageId === "string") {
        onProgress(1);
        resolve(body.storageId);
      } else {
        const why = body?.message ?? (xhr.responseText.slice(0, 200) || "no answer");
        reject(new Error(`the upload failed (HTTP ${xhr.status}): ${why}`));
      }
    });
    xhr.addEventListener("error", () => reject(new Error("the upload failed: the server could not be reached")));
    xhr.addEventListener("abort", () => reject(new Error("the upload was cancelled")));
    xhr.send(file);
  });
}

/** Show a progress element's value (0..1) and its percentage next to it. */
function setProgress(bar, fraction, textEl) {
  const percent = Math.round(Math.min(1, Math.max(0, fraction)) * 100);
  bar.hidden = false;
  bar.value = percent;
  bar.dataset.value = String(percent);
  if (textEl) textEl.textContent = `${percent}%`;
}

// ---- connection state ----------------------------------------------------------------------

const connectionEl = $("connection-state");
function showConnection(state) {
  const label = state.state === "connected" && state.hasInflightRequests ? "saving…" : state.state;
  connectionEl.dataset.state = state.state;
  connectionEl.textContent = label;
}
client.onConnectionChange(showConnection);
showConnection(client.connectionState());

// ---- signing in ----------------------------------------------------------------------------

let session = null; // {subject, name, role, token, expiresAt}
let sessionGeneration = 0;
let viewSubscriptions = []; // unsubscribe functions of the signed-in view

/** A token for the session's user from the dev server's issuer. */
async function mintToken(user) {
  const response = await fetch("/_ripple/dev-auth/token", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ subject: user.subject, name: user.name, role: user.role, ttlSeconds: TOKEN_SECONDS }),
  });
  const text = await response.text();
  let body = null;
  try {
    body = JSON.parse(text);
  } catch {
    // reported below
  }
  if (!response.ok || typeof body?.token !== "string") {
    const why = body?.message ?? body?.error ?? (text.slice(0, 200) || `HTTP ${response.status}`);
    throw new Error(`the dev sign-in failed (HTTP ${response.status}): ${why}. Is this page served by \`ripple dev\`?`);
  }
  return body;
}

/** The SDK's token source: the session's token while it is fresh, a new one when asked. */
async function fetchToken({ forceRefreshToken }) {
  const current = session;
  if (current === null) return null;
  if (!forceRefreshToken && current.token && current.expiresAt - Date.now() > 60_000) return current.token;
  const { token, expiresAt } = await mintToken(current);
  if (session === current) Object.assign(current, { token, expiresAt });
  return token;
}

function subjectOf(name) {
  const slug = name.trim().toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "");
  return slug || "user";
}

async function signIn(user) {
  const signinError = $("signin-error");
  showError(signinError, null);
  stopView();
  const generation = ++sessionGeneration;
  let minted;
  try {
    minted = await mintToken(user); // first outside the client, so a failure shows here
  } catch (error) {
    showError(signinError, error);
    return;
  }
  if (generation !== sessionGeneration) return;
  session = { ...user, token: minted.token, expiresAt: minted.expiresAt };
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(user));
  lastClientError = "";
  await client.setAuth(fetchToken, (accepted) => {
    if (!accepted && generation === sessionGeneration) {
      signOut(`The server refused the sign-in${lastClientError ? `: ${lastClientError}` : "."}`);
    }
  });
  if (generation !== sessionGeneration) return;
  $("signin").hidden = true;
  watch("users:me", {}, (me) => showUser(me, generation), (error) => showError($("page-error"), error));
}

function signOut(reason = null) {
  sessionGeneration++;
  session = null;
  sessionStorage.removeItem(SESSION_KEY);
  stopView();
  client.clearAuth();
  $("current-user").hidden = true;
  $("signout").hidden = true;
  $("creator-view").hidden = true;
  $("reviewer-view").hidden = true;
  $("signin").hidden = false;
  showError($("signin-error"), reason);
}

function stopView() {
  for (const stop of viewSubscriptions.splice(0)) stop();
  for (const list of [myVideos, reviewQueue]) list.clear();
  currentRole = null;
}

/** onUpdate, unsubscribed when the view goes. */
function watch(path, args, callback, onError) {
  const stop = client.onUpdate(path, args, callback, onError);
  viewSubscriptions.push(stop);
  return stop;
}

let currentRole = null;

function showUser(me, generation) {
  if (generation !== sessionGeneration) return;
  showError($("page-error"), null);
  if (me === null) return; // the token is not confirmed yet
  const userEl = $("current-user");
  userEl.hidden = false;
  userEl.textContent = `${me.name ?? me.subject} · ${me.role}`;
  userEl.dataset.role = me.role;
  $("signout").hidden = false;
  if (me.role === currentRole) return;
  // The role decides the view (a reviewer added with users:addReviewer switches live).
  for (const stop of viewSubscriptions.splice(1)) stop(); // keep users:me
  myVideos.clear();
  reviewQueue.clear();
  currentRole = me.role;
  if (me.role === "reviewer") startReviewer();
  else startCreator();
}

document.querySelectorAll("#signin .presets button").forEach((button) => {
  button.addEventListener("click", () =>
    signIn({ subject: button.dataset.subject, name: button.dataset.name, role: button.dataset.role }),
  );
});

$("signin-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const name = $("signin-name").value.trim();
  if (!name) {
    showError($("signin-error"), "Type a name to sign in as.");
    return;
  }
  signIn({ subject: subjectOf(name), name, role: $("signin-role").value });
});

$("signout").addEventListener("click", () => signOut());

// ---- campaigns -----------------------------------------------------------------------------

const campaignNames = new Map(); // campaign id -> name, for the video cards

function fillCampaignSelect(select, campaigns, firstOption) {
  const chosen = select.value;
  select.replaceChildren();
  if (firstOption) select.append(new Option(firstOption.label, firstOption.value));
  for (const campaign of campaigns) {
    select.append(new Option(`${campaign.name} (${campaign.brand})`, campaign._id));
  }
  if ([...select.options].some((o) => o.value === chosen)) select.value = chosen;
}

function rememberCampaigns(campaigns) {
  for (const campaign of campaigns) campaignNames.set(campaign._id, campaign.name);
  myVideos.refresh();
  reviewQueue.refresh();
}

// ---- video lists ---------------------------------------------------------------------------

/** A live, paginated list of video cards. Cards are kept by id and updated in place (a playing
 * video is not restarted by an update); each card also watches `videos:get` for what the list
 * does not carry (the file's URL, the thumbnail, the duration). */
class VideoList {
  constructor({ listEl, emptyEl, errorEl, moreButton, template, render }) {
    Object.assign(this, { listEl, emptyEl, errorEl, moreButton, template, renderCard: render });
    this.cards = new Map(); // id -> {el, doc, detail, stop}
    this.handle = null;
    this.moreButton.addEventListener("click", () => this.handle?.loadMore(PAGE_SIZE));
  }

  /** Show the live pages of `path(args)`. `keepCards`: leave the current cards up until the
   * first page arrives (then they are kept, moved or removed as it says), so a new search does
   * not blank the list on every pause in typing; `emptyText`: what to say when nothing is found. */
  start(path, args, { keepCards = false, emptyText = null } = {}) {
    if (keepCards) {
      this.handle?.unsubscribe();
    } else {
      this.clear();
    }
    if (emptyText !== null) this.emptyEl.textContent = emptyText;
    this.handle = client.onPaginatedUpdate(
      path,
      args,
      { initialNumItems: PAGE_SIZE },
      ({ results, status }) => this.update(results, status),
      (error) => showError(this.errorEl, error),
    );
  }

  update(results, status) {
    showError(this.errorEl, null);
    const seen = new Set();
    results.forEach((doc, index) => {
      seen.add(doc._id);
      let card = this.cards.get(doc._id);
      if (card === undefined) {
        card = this.createCard(doc);
        this.cards.set(doc._id, card);
      }
      card.doc = doc;
      this.renderCard(card);
      if (this.listEl.children[index] !== card.el) this.listEl.insertBefore(card.el, this.listEl.children[index] ?? null);
    });
    for (const [id, card] of this.cards) {
      if (!seen.has(id)) this.removeCard(id, card);
    }
    this.emptyEl.hidden = status === "LoadingFirstPage" || results.length > 0;
    this.listEl.dataset.status = status;
    this.moreButton.hidden = status !== "CanLoadMore" && status !== "LoadingMore";
    this.moreButton.disabled = status !== "CanLoadMore";
  }

  createCard(doc) {
    const el = this.template.content.firstElementChild.cloneNode(true);
    el.dataset.videoId = doc._id;
    const card = { el, doc, detail: null, stop: null };
    card.stop = client.onUpdate(
      "videos:get",
      { id: doc._id },
      (detail) => {
        card.detail = detail;
        this.renderCard(card);
      },
      (error) => showError(card.el.querySelector(".error[role=alert]"), error),
    );
    return card;
  }

  removeCard(id, card) {
    card.stop();
    card.el.remove();
    this.cards.delete(id);
  }

  refresh() {
    for (const card of this.cards.values()) this.renderCard(card);
  }

  clear() {
    this.handle?.unsubscribe();
    this.handle = null;
    for (const [id, card] of this.cards) this.removeCard(id, card);
    this.emptyEl.hidden = true;
    this.moreButton.hidden = true;
    showError(this.errorEl, null);
  }
}

/** The list's document with the detail's fields over it (the detail adds url, thumbnailUrl,
 * duration; both are live, so either may be the newer). */
function videoOf(card) {
  return card.detail ? { ...card.doc, ...card.detail } : card.doc;
}

function renderCommon(el, video, prefix) {
  el.dataset.status = video.status;
  const badge = $(`${prefix}-status`, el);
  badge.textContent = STATUS_LABELS[video.status] ?? video.status;
  badge.dataset.status = video.status;
  $(`${prefix}-duration`, el).textContent = formatDuration(video.duration);
  $(`${prefix}-campaign`, el).textContent = campaignNames.get(video.campaignId) ?? "";
  $(`${prefix}-caption`, el).textContent =
    [video.caption, ...(video.hashtags ?? []).map((h) => `#${h}`)].filter(Boolean).join(" ");
  const thumb = $(`${prefix}-thumbnail`, el);
  if (video.thumbnailUrl) {
    if (thumb.getAttribute("src") !== video.thumbnailUrl) thumb.src = video.thumbnailUrl;
    thumb.alt = `Thumbnail of ${video.caption || "the video"}`;
    thumb.hidden = false;
  } else {
    thumb.hidden = true;
    thumb.removeAttribute("src");
  }
  const notes = $(`${prefix}-notes`, el);
  // Reviewers' notes (the history's other entries are the app's own: a failure's reason is shown
  // on its own line).
  const entries = (video.approvalHistory ?? []).filter((entry) => entry.note && entry.reviewerId);
  notes.replaceChildren(
    ...entries.map((entry) => {
      const li = document.createElement("li");
      li.dataset.status = entry.status;
      const label = document.createElement("strong");
      label.textContent = `${STATUS_LABELS[entry.status] ?? entry.status}: `;
      const time = document.createElement("time");
      time.textContent = ` (${formatTime(entry.at)})`;
      li.append(label, entry.note, time);
      return li;
    }),
  );
  notes.hidden = entries.length === 0;
}

function renderMine(card) {
  const video = videoOf(card);
  const el = card.el;
  renderCommon(el, video, "video");
  el.querySelector(".placeholder").hidden = Boolean(video.thumbnailUrl);
  const failure = $("video-failure", el);
  failure.hidden = video.status !== "failed";
  failure.textContent = video.status === "failed" ? `Processing failed: ${video.failureReason ?? "no reason given"}` : "";
  const resubmit = $("video-resubmit-form", el);
  const canResubmit = video.status === "changes_needed" || video.status === "failed"; // a new file, a new round
  if (resubmit.hidden === canResubmit) {
    resubmit.hidden = !canResubmit;
    if (canResubmit) $("video-resubmit-progress", el).hidden = true;
  }
  if (!resubmit.dataset.wired) {
    resubmit.dataset.wired = "1";
    resubmit.addEventListener("submit", (event) => {
      event.preventDefault();
      resubmitVideo(card);
    });
  }
}

function renderReview(card) {
  const video = videoOf(card);
  const el = card.el;
  renderCommon(el, video, "review");
  $("review-creator", el).textContent = `by ${video.creatorName ?? video.creatorId ?? "unknown"}`;
  const player = $("review-player", el);
  if (video.url) {
    if (player.getAttribute("src") !== video.url) player.src = video.url;
    if (video.thumbnailUrl) player.poster = video.thumbnailUrl;
    player.hidden = false;
    $("review-thumbnail", el).hidden = true;
  } else {
    player.hidden = true;
  }
  el.querySelector(".placeholder").hidden = Boolean(video.url || video.thumbnailUrl);
  const undecided = video.status === "under_review";
  for (const button of el.querySelectorAll("[data-decision]")) button.disabled = !undecided || card.busy === true;
  if (!card.wired) {
    card.wired = true;
    for (const button of el.querySelectorAll("[data-decision]")) {
      button.addEventListener("click", () => decide(card, button.dataset.decision));
    }
  }
}

const myVideos = new VideoList({
  listEl: $("my-videos"),
  emptyEl: $("my-videos-empty"),
  errorEl: $("my-videos-error"),
  moreButton: $("my-videos-more"),
  template: document.getElementById("video-card"),
  render: renderMine,
});

const reviewQueue = new VideoList({
  listEl: $("review-queue"),
  emptyEl: $("review-empty"),
  errorEl: $("review-queue-error"),
  moreButton: $("review-more"),
  template: document.getElementById("review-card"),
  render: renderReview,
});

// ---- creator -------------------------------------------------------------------------------

function startCreator() {
  $("reviewer-view").hidden = true;
  $("creator-view").hidden = false;
  const select = $("upload-campaign");
  watch(
    "campaigns:list",
    { status: "active" },
    (campaigns) => {
      fillCampaignSelect(select, campaigns, {
        value: "",
        label: campaigns.length ? "Choose a campaign" : "No active campaigns yet",
      });
      rememberCampaigns(campaigns);
    },
    (error) => showError($("upload-error"), error),
  );
  myVideos.start("videos:listMine", {});
}

function splitHashtags(text) {
  return text.split(/[\s,]+/).map((tag) => tag.replace(/^#+/, "")).filter(Boolean);
}

$("upload-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.currentTarget;
  const errorEl = $("upload-error");
  const bar = $("upload-progress");
  const text = $("upload-progress-text");
  const button = $("upload-submit");
  showError(errorEl, null);
  const campaignId = $("upload-campaign").value;
  const file = $("upload-file").files[0];
  if (!campaignId) return showError(errorEl, "Choose a campaign.");
  if (!file) return showError(errorEl, "Choose a video file.");
  button.disabled = true;
  setProgress(bar, 0, text);
  try {
    const uploadUrl = await client.mutation("videos:generateUploadUrl", {});
    const storageId = await uploadFile(uploadUrl, file, (fraction) => setProgress(bar, fraction, text));
    const platforms = [...form.querySelectorAll("input[name=platform]:checked")].map((box) => box.value);
    await client.mutation("videos:createVideo", {
      campaignId,
      storageId,
      caption: $("upload-caption").value.trim() || undefined,
      hashtags: splitHashtags($("upload-hashtags").value),
      platformSelections: platforms,
    });
    text.textContent = "100% · uploaded";
    $("upload-file").value = "";
    $("upload-caption").value = "";
    $("upload-hashtags").value = "";
  } catch (error) {
    showError(errorEl, error);
    text.textContent = "";
  } finally {
    button.disabled = false;
  }
});

async function resubmitVideo(card) {
  const el = card.el;
  const errorEl = $("video-error", el);
  const file = $("video-resubmit-file", el).files[0];
  const button = $("video-resubmit", el);
  const bar = $("video-resubmit-progress", el);
  showError(errorEl, null);
  if (!file) return showError(errorEl, "Choose the new video file.");
  button.disabled = true;
  setProgress(bar, 0);
  try {
    const uploadUrl = await client.mutation("videos:generateUploadUrl", {});
    const storageId = await uploadFile(uploadUrl, file, (fraction) => setProgress(bar, fraction));
    await client.mutation("videos:resubmit", { videoId: card.doc._id, storageId });
    $("video-resubmit-file", el).value = "";
  } catch (error) {
    showError(errorEl, error);
  } finally {
    button.disabled = false;
  }
}

// ---- reviewer ------------------------------------------------------------------------------

function startReviewer() {
  $("creator-view").hidden = true;
  $("reviewer-view").hidden = false;
  watch(
    "campaigns:list",
    {},
    (campaigns) => {
      fillCampaignSelect($("review-filter-campaign"), campaigns, { value: "", label: "All campaigns" });
      rememberCampaigns(campaigns);
    },
    (error) => showError($("review-queue-error"), error),
  );
  startQueue();
}

let queueShown = null; // what the queue subscribes to, as JSON [path, args]
let searchTimer = null;

/** The review queue as the filters say: the newest videos (videos:listForReview) or, with words
 * in the search box, the best matches (videos:searchForReview); live either way. */
function startQueue({ typing = false } = {}) {
  const campaignId = $("review-filter-campaign").value;
  const status = $("review-filter-status").value;
  const text = $("review-search").value.trim();
  const filters = {
    status: status === "any" ? null : status, // null: every status
    campaignId: campaignId || undefined,
  };
  const [path, args] = text ? ["videos:searchForReview", { query: text, ...filters }] : ["videos:listForReview", filters];
  const shown = JSON.stringify([path, args]);
  if (typing && shown === queueShown && reviewQueue.handle !== null) return; // e.g. a space typed
  queueShown = shown;
  reviewQueue.start(path, args, {
    keepCards: typing,
    emptyText: text ? `No videos match “${text}”.` : "Nothing here.",
  });
}

$("review-filter-status").addEventListener("change", () => currentRole === "reviewer" && startQueue());
$("review-filter-campaign").addEventListener("change", () => currentRole === "reviewer" && startQueue());
$("review-search").addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => currentRole === "reviewer" && startQueue({ typing: true }), SEARCH_DELAY_MS);
});

$("campaign-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.currentTarget;
  const errorEl = $("campaign-error");
  const created = $("campaign-created");
  const button = $("campaign-submit");
  showError(errorEl, null);
  created.hidden = true;
  const name = $("campaign-name").value.trim();
  button.disabled = true;
  try {
    await client.mutation("campaigns:create", {
      name,
      brand: $("campaign-brand").value.trim(),
      description: $("campaign-description").value.trim() || undefined,
    });
    form.reset();
    created.textContent = `Created campaign “${name}”.`;
    created.hidden = false;
  } catch (error) {
    showError(errorEl, error);
  } finally {
    button.disabled = false;
  }
});

async function decide(card, decision) {
  const el = card.el;
  const errorEl = $("review-error", el);
  const note = $("review-note", el).value.trim();
  showError(errorEl, null);
  if (decision === "requestChanges" && !note) {
    showError(errorEl, "Write a note saying what to change.");
    return;
  }
  card.busy = true;
  renderReview(card);
  try {
    await client.mutation(`videos:${decision}`, { videoId: card.doc._id, note: note || undefined });
    $("review-note", el).value = "";
  } catch (error) {
    showError(errorEl, error);
  } finally {
    card.busy = false;
    if (el.isConnected) renderReview(card);
  }
}

// ---- start ---------------------------------------------------------------------------------

window.addEventListener("unhandledrejection", (event) => showError($("page-error"), event.reason));

const saved = (() => {
  try {
    return JSON.parse(sessionStorage.getItem(SESSION_KEY) ?? "null");
  } catch {
    return null;
  }
})();
if (saved?.subject && saved?.name) {
  signIn(saved);
} else {
  $("signin").hidden = false;
}
