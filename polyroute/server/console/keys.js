// The Keys and teams page: each key's and team's spend in its budget's period against
// that budget (GET /admin/spend from the period's start), its limits, and a key made,
// rotated or revoked (its secret shown once, in the answer that made it).

import { api, query } from "./api.js";
import { byId, el, usd } from "./dom.js";

const ARM_MS = 4000;

/** The first day of ``period``'s window now (UTC, as the ledger counts), or "" for total. */
export function periodStart(period, now = new Date()) {
  const day = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate()));
  if (period === "week") day.setUTCDate(day.getUTCDate() - ((day.getUTCDay() + 6) % 7));
  else if (period === "month") day.setUTCDate(1);
  else if (period === "total") return "";
  return day.toISOString().slice(0, 10);
}

/** {period: {group: usd}} for each period in ``periods``, summed by ``groupBy``. */
async function spendBy(groupBy, periods) {
  const found = {};
  await Promise.all(
    [...periods].map(async (period) => {
      const page = await api("GET", `admin/spend${query({ group_by: groupBy, from: periodStart(period) })}`);
      found[period] = Object.fromEntries(page.data.map((row) => [row.group, row.cost_usd]));
    }),
  );
  return found;
}

function spendCell(budget, spent) {
  if (!budget) return el("td", { class: "spend muted" }, `${usd(spent)} today, no budget`);
  const share = budget.usd > 0 ? Math.min(1, spent / budget.usd) : 1;
  const bar = el("div", { class: share >= 1 ? "meter full" : share >= 0.8 ? "meter high" : "meter" });
  const fill = el("span");
  fill.style.width = `${(share * 100).toFixed(1)}%`; // CSSOM: allowed under style-src 'self'
  bar.append(fill);
  return el("td", { class: "spend" }, bar, `${usd(spent)} of ${usd(budget.usd)} per ${budget.period}`);
}

function spentOf(owner, spend) {
  const period = owner.budget ? owner.budget.period : "day";
  return (spend[period] || {})[owner.id] || 0;
}

function reveal(title, secret) {
  byId("new-secret-title").textContent = title;
  byId("new-secret-value").value = secret;
  byId("new-secret").hidden = false;
  byId("new-secret-value").select();
}

async function rotate(key) {
  const rotated = await api("POST", `admin/keys/${encodeURIComponent(key.id)}/rotate`, {});
  reveal(`New secret of ${key.name}.`, rotated.key);
  await showKeys();
}

function armed(button, label, act) {
  // A revoke takes two clicks: the first arms the button for a few seconds.
  button.addEventListener("click", async () => {
    if (!button.classList.contains("armed")) {
      button.classList.add("armed");
      button.textContent = `Confirm ${label.toLowerCase()}`;
      setTimeout(() => {
        button.classList.remove("armed");
        button.textContent = label;
      }, ARM_MS);
      return;
    }
    await act();
  });
  return button;
}

function keyRow(key, spend) {
  const actions = el("td", { class: "actions" });
  if (key.status === "active") {
    const failed = (error) => {
      byId("keys-message").textContent = error.message;
    };
    actions.append(
      el("button", { type: "button", class: "rotate", onclick: () => rotate(key).catch(failed) }, "Rotate"),
      armed(el("button", { type: "button", class: "revoke" }, "Revoke"), "Revoke", () =>
        api("DELETE", `admin/keys/${encodeURIComponent(key.id)}`).then(showKeys).catch(failed),
      ),
    );
  }
  return el(
    "tr",
    { data: { key: key.name }, class: `status-${key.status}` },
    el("td", {}, el("strong", {}, key.name)),
    el("td", { class: "mono" }, `${key.display_prefix}…`),
    el("td", {}, key.team ?? "–"),
    el("td", { class: "status" }, key.status),
    el("td", { class: "models" }, key.models ? key.models.join(", ") : "any"),
    el("td", { class: "num" }, key.rpm ?? "–"),
    el("td", { class: "num" }, key.tpm ?? "–"),
    spendCell(key.budget, spentOf(key, spend)),
    actions,
  );
}

function teamRow(team, spend) {
  return el(
    "tr",
    { data: { team: team.name } },
    el("td", {}, el("strong", {}, team.name)),
    el("td", { class: "num" }, team.rpm ?? "–"),
    el("td", { class: "num" }, team.tpm ?? "–"),
    spendCell(team.budget, spentOf(team, spend)),
  );
}

function periodsOf(owners) {
  return new Set(["day", ...owners.filter((o) => o.budget).map((o) => o.budget.period)]);
}

export async function showKeys() {
  const message = byId("keys-message");
  try {
    const [keys, teams] = await Promise.all([
      api("GET", "admin/keys?include_revoked=true"),
      api("GET", "admin/teams"),
    ]);
    const [keySpend, teamSpend] = await Promise.all([
      spendBy("key", periodsOf(keys.data)),
      spendBy("team", periodsOf(teams.data)),
    ]);
    byId("keys-table").tBodies[0].replaceChildren(...keys.data.map((k) => keyRow(k, keySpend)));
    byId("teams-table").tBodies[0].replaceChildren(...teams.data.map((t) => teamRow(t, teamSpend)));
    const choice = byId("new-key").elements.team;
    choice.replaceChildren(el("option", { value: "" }, "none"), ...teams.data.map((t) => el("option", { value: t.name }, t.name)));
    message.textContent = keys.data.length ? "" : "No key made at runtime yet.";
  } catch (error) {
    message.textContent = error.message;
  }
}

function newKeyBody(form) {
  const fields = form.elements;
  const body = { name: fields.name.value.trim() };
  if (fields.team.value) body.team = fields.team.value;
  const models = fields.models.value.split(",").map((m) => m.trim()).filter(Boolean);
  if (models.length) body.models = models;
  for (const limit of ["rpm", "tpm"]) {
    if (fields[limit].value) body[limit] = Number.parseInt(fields[limit].value, 10);
  }
  if (fields.budget_usd.value) {
    body.budget = { usd: Number(fields.budget_usd.value), period: fields.budget_period.value };
  }
  return body;
}

export function setUpKeys() {
  byId("refresh-keys").addEventListener("click", () => showKeys());
  const form = byId("new-key");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const error = byId("new-key-error");
    error.textContent = "";
    try {
      const made = await api("POST", "admin/keys", newKeyBody(form));
      reveal(`Key ${made.name} is made.`, made.key);
      form.reset();
      await showKeys();
    } catch (failed) {
      error.textContent = failed.message;
    }
  });
  byId("new-secret-done").addEventListener("click", () => {
    byId("new-secret-value").value = "";
    byId("new-secret").hidden = true;
  });
}
