// The Ripple dashboard (docs/dashboard.md): log in with the admin key, then one section at a
// time by hash route (#/data/messages, #/functions/messages:send, #/logs, ...). Plain ES modules
// served by Ripple at /_ripple/dashboard/, the JS SDK from /_ripple/sdk/; no build step.
//
// Each section module exports `mount(ctx, container, params)` and returns a function that stops
// what it started (subscriptions, polling). `ctx` holds the websocket client (admin-authenticated,
// so `_system/dashboard:*` queries are live) and `reportError` for errors with no place of their
// own on the page.

import { RippleClient } from "/_ripple/sdk/ripple.js";
import { HttpFailure, session, verifyKey } from "./api.js";
import { errorText, fill, showError } from "./dom.js";
import * as data from "./data.js";
import * as env from "./env.js";
import * as files from "./files.js";
import * as functions from "./functions.js";
import * as health from "./health.js";
import * as logs from "./logs.js";
import * as schedules from "./schedules.js";

const SECTIONS = { data, functions, logs, schedules, files, env, health };

const $ = (selector) => document.querySelector(selector);

let client = null;
let unmount = () => {};
let mountedRoute = null;

function reportError(error) {
  showError($("#page-error"), error === null ? null : errorText(error));
}

/** The route of the current hash: {section, params} (params: the path segments after it). */
function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  const section = parts[0] in SECTIONS ? parts[0] : "data";
  return { section, params: parts.slice(1) };
}

function render() {
  if (client === null) return;
  const { section, params } = route();
  const key = `${section}/${params.join("/")}`;
  if (key === mountedRoute) return;
  for (const link of document.querySelectorAll(".nav a")) {
    if (link.dataset.section === section) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  // A section that understands a change of its own parameters (Data: another table or a
  // document) keeps its subscriptions; any other change mounts the section afresh.
  if (mountedRoute !== null && mountedRoute.split("/")[0] === section && SECTIONS[section].update?.(params)) {
    mountedRoute = key;
    return;
  }
  unmount();
  reportError(null);
  const container = fill($("#section"));
  container.dataset.section = section;
  mountedRoute = key;
  try {
    unmount = SECTIONS[section].mount({ client, reportError }, container, params) ?? (() => {});
  } catch (error) {
    unmount = () => {};
    reportError(error);
  }
}

function showConnection(state) {
  const el = $('[data-testid="connection-state"]');
  el.dataset.state = state.state;
  el.textContent = state.state;
}

function start(key) {
  $("#login").hidden = true;
  $("#shell").hidden = false;
  client = new RippleClient(location.origin, { showLogLines: false });
  client.setAdminAuth(key);
  client.onConnectionChange(showConnection);
  showConnection(client.connectionState());
  mountedRoute = null;
  render();
}

function stop() {
  unmount();
  unmount = () => {};
  mountedRoute = null;
  if (client !== null) void client.close();
  client = null;
  session.key = null;
  fill($("#section"));
  $("#shell").hidden = true;
  showLogin(null);
}

function showLogin(error) {
  $("#login").hidden = false;
  showError($('[data-testid="login-error"]'), error);
  $("#login-key").focus();
}

async function login(event) {
  event.preventDefault();
  const input = $("#login-key");
  const button = $('[data-testid="login-submit"]');
  const key = input.value.trim();
  if (!key) return;
  button.disabled = true;
  showError($('[data-testid="login-error"]'), null);
  try {
    await verifyKey(key);
  } catch (error) {
    const refused = error instanceof HttpFailure && error.status === 401;
    showLogin(refused ? `The server refused this admin key: ${error.message}` : errorText(error));
    return;
  } finally {
    button.disabled = false;
  }
  input.value = "";
  session.key = key;
  start(key);
}

/** `#key=<admin key>`, as `ripple dashboard` opens the page: taken into this tab's session and
 * out of the address bar and history at once (a fragment never reaches the server). */
function keyFromAddress() {
  const match = /^#key=([^&]*)$/.exec(location.hash);
  if (match === null) return;
  history.replaceState(null, "", `${location.pathname}${location.search}#/`);
  session.key = decodeURIComponent(match[1]);
}

/** A key kept from earlier in this tab is checked again: the server may have a new one. */
async function resume() {
  keyFromAddress();
  const key = session.key;
  if (key === null) {
    showLogin(null);
    return;
  }
  try {
    await verifyKey(key);
  } catch (error) {
    session.key = null;
    showLogin(`Log in again: ${errorText(error)}`);
    return;
  }
  start(key);
}

$("#login-form").addEventListener("submit", login);
$("#logout").addEventListener("click", stop);
window.addEventListener("hashchange", render);
window.addEventListener("unhandledrejection", (event) => reportError(event.reason));
void resume();
