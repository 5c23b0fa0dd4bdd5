// The admin key and the calls that carry it. The key lives in this tab's session storage
// (gone when the tab closes, never shared with another tab) and travels only in the
// Authorization header: never in a URL, never in a cookie.

const STORAGE = "polyroute.adminKey";
const signedOut = [];

export const session = {
  get key() {
    return sessionStorage.getItem(STORAGE);
  },
  signIn(key) {
    sessionStorage.setItem(STORAGE, key);
  },
  signOut() {
    sessionStorage.removeItem(STORAGE);
    for (const listener of signedOut) listener();
  },
  onSignOut(listener) {
    signedOut.push(listener);
  },
};

export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** The request options of a call with the admin key. */
export function authorized(options = {}) {
  return {
    ...options,
    headers: { ...(options.headers || {}), Authorization: `Bearer ${session.key}` },
    cache: "no-store",
    credentials: "omit",
    referrerPolicy: "no-referrer",
  };
}

/** The error an answer that is not 2xx says (the admin API's OpenAI-shaped error). */
export async function failure(answer) {
  let body = null;
  try {
    body = await answer.json();
  } catch {
    body = null;
  }
  const error = (body && body.error) || {};
  return new ApiError(answer.status, error.message || answer.statusText, error.code);
}

/** One admin API call, its JSON; throws ApiError (and signs out on a 401). */
export async function api(method, path, body) {
  const options = { method };
  if (body !== undefined) {
    options.headers = { "Content-Type": "application/json" };
    options.body = JSON.stringify(body);
  }
  const answer = await fetch(path, authorized(options));
  if (!answer.ok) {
    const error = await failure(answer);
    if (answer.status === 401) session.signOut();
    throw error;
  }
  return answer.json();
}

/** A query string of the given fields that have a value. */
export function query(fields) {
  const given = Object.entries(fields).filter(([, value]) => value !== "" && value != null);
  return given.length ? `?${new URLSearchParams(given)}` : "";
}
