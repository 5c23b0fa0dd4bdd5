// The console's entry point: sign in with the admin key, then the pages by the URL's
// fragment (#live, #requests, #request:<id>, #keys). The fragment never holds the key.

import { session } from "./api.js";
import { byId } from "./dom.js";
import { setUpKeys, showKeys } from "./keys.js";
import { refreshCharts, setUpLive, startLive, stopLive } from "./live.js";
import { setUpRequests, showRequest, showRequests } from "./requests.js";

const PAGES = ["live", "requests", "request", "keys"];

function route() {
  const hash = decodeURIComponent(location.hash.slice(1));
  const [page, ...rest] = hash.split(":");
  const shown = PAGES.includes(page) ? page : "live";
  for (const name of PAGES) byId(`page-${name}`).hidden = name !== shown;
  for (const link of document.querySelectorAll("#nav a")) {
    const current = link.dataset.page === shown || (shown === "request" && link.dataset.page === "requests");
    link.classList.toggle("current", current);
  }
  if (shown === "live") refreshCharts();
  else if (shown === "requests") showRequests();
  else if (shown === "request") showRequest(rest.join(":"));
  else if (shown === "keys") showKeys();
}

function signedIn(yes) {
  byId("login").hidden = yes;
  byId("nav").hidden = !yes;
  byId("sign-out").hidden = !yes;
  if (!yes) for (const name of PAGES) byId(`page-${name}`).hidden = true;
}

async function open() {
  try {
    await startLive();
  } catch (error) {
    session.signOut();
    byId("login-error").textContent =
      error.status === 401 || error.status === 403 ? "That is not the admin key." : error.message;
    return;
  }
  byId("login-error").textContent = "";
  signedIn(true);
  route();
}

function setUp() {
  session.onSignOut(() => {
    stopLive();
    byId("connection").textContent = "";
    signedIn(false);
  });
  byId("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const field = byId("admin-key");
    session.signIn(field.value.trim());
    field.value = "";
    open();
  });
  byId("sign-out").addEventListener("click", () => session.signOut());
  window.addEventListener("hashchange", () => {
    if (session.key) route();
  });
  setUpRequests((id) => {
    location.hash = `request:${encodeURIComponent(id)}`;
  });
  setUpKeys();
  setUpLive();
  if (session.key) open();
  else signedIn(false);
}

setUp();
