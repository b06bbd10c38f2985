// The starsrec explorer: plain JavaScript over the JSON API, no build step, no dependencies.
// Every value from the server is put in the page with textContent (never as HTML).
"use strict";

const state = {
  catalogue: null,
  user: null,
  // The request time: null = now. With a date, each posted event moves a private clock a
  // minute on, so the events keep their order and fall inside one session.
  date: null,
  clicks: 0,
  previous: new Map(), // item id -> rank in the last list shown (to mark what moved)
  lastTimestamp: null, // the shopper's latest event (picks the year of "before Christmas")
};

const $ = (id) => document.getElementById(id);

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

async function api(method, path, body) {
  const headers = { accept: "application/json" };
  const key = $("api-key").value.trim();
  if (key) headers.authorization = `Bearer ${key}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail);
    const error = new Error(detail || `${response.status} ${response.statusText}`);
    error.status = response.status;
    throw error;
  }
  return data;
}

function say(message, isError = false) {
  const status = $("status");
  status.textContent = message;
  status.classList.toggle("error", isError);
}

// -- time ------------------------------------------------------------------------------
function baseSeconds() {
  if (!state.date) return null;
  const [y, m, d] = state.date.split("-").map(Number);
  return Date.UTC(y, m - 1, d, 12) / 1000; // noon UTC of the chosen day
}

function requestSeconds() {
  const base = baseSeconds();
  return base === null ? undefined : base + 60 * state.clicks + 1;
}

function setDate(value) {
  state.date = value || null;
  state.clicks = 0;
  $("context-date").value = value || "";
  refresh();
}

function formatTime(seconds) {
  return new Date(seconds * 1000).toISOString().replace("T", " ").slice(0, 16);
}

// -- catalogue and shoppers ------------------------------------------------------------
async function loadCatalogue() {
  const info = await api("GET", "/v1/catalogue");
  state.catalogue = info;
  $("catalogue-info").textContent =
    `${info.items.toLocaleString()} items (${info.in_stock.toLocaleString()} in stock), ` +
    `${info.users.toLocaleString()} shoppers with a long-term memory, ` +
    `${info.events.toLocaleString()} stored events`;
  for (const select of [$("filter-class"), $("product-class")]) {
    // Keep the first option ("All classes" / "Let the model decide"): loading runs again
    // when an API key is entered.
    select.replaceChildren(select.options[0]);
    for (const name of info.classes) select.append(el("option", { value: name, text: name }));
  }
  $("filter-purchased").checked = !info.allow_repeats;
  $("event-type").replaceChildren(
    ...info.event_types.map((name) => el("option", { value: name, text: name })),
  );
  $("event-type").value = info.main_event_type;
}

async function searchUsers() {
  const query = $("user-query").value.trim();
  const list = $("user-matches");
  const { users } = await api("GET", `/v1/users?query=${encodeURIComponent(query)}&limit=8`);
  list.replaceChildren(
    ...users.map((id) =>
      el("li", {}, el("button", { type: "button", class: "chip", onclick: () => pickUser(id) }, id)),
    ),
  );
}

async function pickUser(id) {
  state.user = id;
  state.previous = new Map();
  $("user-query").value = id;
  await refresh();
}

function chipList(label, counts) {
  if (!counts.length) return el("p", { class: "muted", text: `${label}: none` });
  return el(
    "div",
    {},
    el("h3", { text: label }),
    el(
      "ul",
      { class: "chips" },
      ...counts.map((c) => el("li", { class: "tag", text: `${c.name} · ${Math.round(c.count)}` })),
    ),
  );
}

async function showSummary() {
  const box = $("shopper-summary");
  if (!state.user) return;
  const at = requestSeconds();
  const query = at === undefined ? "" : `?timestamp=${at}`;
  let summary;
  try {
    summary = await api("GET", `/v1/users/${encodeURIComponent(state.user)}${query}`);
  } catch (error) {
    if (error.status !== 404) throw error;
    box.replaceChildren(
      el("p", { class: "lead", text: state.user }),
      el("p", { class: "muted", text: "No history yet: add items to start a session." }),
    );
    return;
  }
  if (summary.last_timestamp) state.lastTimestamp = summary.last_timestamp;
  const span = summary.events
    ? `${summary.truncated ? "last " : ""}${summary.events} events, ` +
      `${formatTime(summary.first_timestamp)} to ` +
      `${formatTime(summary.last_timestamp)}`
    : "no events before this request time";
  const session = summary.session.length
    ? el(
        "ol",
        { class: "session" },
        ...summary.session.map((e) =>
          el(
            "li",
            {},
            el("span", { text: e.text }),
            el("span", { class: "muted", text: ` ${e.event_type}, ${formatTime(e.timestamp)}` }),
          ),
        ),
      )
    : el("p", { class: "muted", text: "No current session." });
  box.replaceChildren(
    el("p", { class: "lead", text: summary.user_id }),
    el("p", { class: "muted", text: span }),
    chipList("Top classes", summary.top_classes),
    chipList("Top tags", summary.top_tags),
    el("h3", { text: "Current session" }),
    session,
  );
}

// -- recommendations -------------------------------------------------------------------
function requestBody() {
  const classes = $("filter-class").value;
  const body = {
    k: Number($("result-count").value),
    filters: {
      in_stock_only: $("filter-stock").checked,
      classes: classes ? [classes] : [],
      exclude_purchased: $("filter-purchased").checked,
    },
  };
  if (state.user) body.user_id = state.user;
  const at = requestSeconds();
  if (at !== undefined) body.timestamp = at;
  return body;
}

function card(item, rank) {
  const before = state.previous.get(item.item_id);
  const moved =
    state.previous.size === 0
      ? null
      : before === undefined
        ? el("span", { class: "badge new", text: "new" })
        : before !== rank
          ? el("span", { class: "badge", text: `was #${before + 1}` })
          : null;
  const shared = new Set(item.shared_tags);
  const tags = el(
    "ul",
    { class: "chips", "aria-label": "Tags" },
    ...item.tags.map((t) =>
      el("li", { class: shared.has(t) ? "tag shared" : "tag", text: shared.has(t) ? `${t} ✓` : t }),
    ),
  );
  const why =
    item.memory === "context"
      ? "no history: popular at this time"
      : item.memory === "repeat"
        ? "bought before (repeat)"
        : `driven by the ${item.memory} memory`;
  return el(
    "li",
    { class: "card", "data-item-id": item.item_id },
    el(
      "div",
      { class: "card-head" },
      el("span", { class: "rank", text: `#${rank + 1}` }),
      el("span", { class: "title", text: item.text }),
      moved,
    ),
    el(
      "p",
      { class: "muted" },
      `${item.item_id} · score ${item.score.toFixed(3)} · ${why}` +
        (item.shared_tags.length ? ` · shares ${item.shared_tags.join(", ")}` : ""),
    ),
    tags,
    el(
      "button",
      {
        type: "button",
        class: "add",
        // The visible words first (WCAG "label in name"), then which item.
        "aria-label": `Add to session: ${item.text}`,
        onclick: () => postEvent(item.item_id, item.text),
      },
      "Add to session",
    ),
  );
}

async function showRecommendations() {
  const list = $("recommendations");
  list.setAttribute("aria-busy", "true");
  const data = await api("POST", "/v1/recommend", requestBody());
  list.replaceChildren(...data.items.map(card));
  list.setAttribute("aria-busy", "false");
  const fresh = data.items.filter((item) => !state.previous.has(item.item_id)).length;
  state.previous = new Map(data.items.map((item, rank) => [item.item_id, rank]));
  return { count: data.items.length, fresh, took: data.took_ms };
}

async function refresh(note = "") {
  try {
    await showSummary();
    const { count, fresh, took } = await showRecommendations();
    const who = state.user ? `for ${state.user}` : "for an anonymous shopper";
    const when = state.date ? `on ${state.date}` : "now";
    const change = note ? `${note} ${fresh} new in the list. ` : "";
    say(`${change}${count} recommendations ${who} ${when} (${took} ms).`);
  } catch (error) {
    say(error.message, true);
  }
}

// -- writes: session events and products -----------------------------------------------
async function postEvent(itemId, text) {
  if (!state.user) {
    say("Pick a shopper first: events belong to a shopper.", true);
    $("user-query").focus();
    return;
  }
  const base = baseSeconds();
  state.clicks += 1;
  const event = {
    user_id: state.user,
    item_id: itemId,
    event_type: $("event-type").value || undefined,
    event_id: `explorer-${Date.now()}-${Math.random().toString(36).slice(2)}`,
  };
  if (base !== null) event.timestamp = base + 60 * state.clicks;
  try {
    await api("POST", "/v1/events", event);
  } catch (error) {
    say(error.message, true);
    return;
  }
  await refresh(`Added “${text}” to the session.`);
}

async function searchItems(event) {
  event.preventDefault();
  const query = $("item-query").value.trim();
  try {
    const { items } = await api("GET", `/v1/items?query=${encodeURIComponent(query)}&limit=8`);
    $("item-matches").replaceChildren(
      ...items.map((item) =>
        el(
          "li",
          {},
          el(
            "button",
            { type: "button", class: "linkish", onclick: () => postEvent(item.item_id, item.text) },
            `${item.text}`,
          ),
          el("span", { class: "muted", text: ` ${item.item_id}${item.in_stock ? "" : " (out of stock)"}` }),
        ),
      ),
    );
    if (!items.length) $("item-matches").replaceChildren(el("li", { class: "muted", text: "No match." }));
  } catch (error) {
    say(error.message, true);
  }
}

async function addProduct(event) {
  event.preventDefault();
  const title = $("product-title").value.trim();
  const result = $("product-result");
  if (!title) return;
  const itemClass = $("product-class").value;
  const itemId = `new-${Date.now().toString(36)}`;
  const product = { item_id: itemId, text: title };
  if (itemClass) product.class = itemClass;
  try {
    await api("PUT", "/v1/items", product);
    const { users } = await api("GET", `/v1/items/${encodeURIComponent(itemId)}/audience?k=5`);
    result.replaceChildren(
      el("p", { text: `Added ${itemId}. The shoppers it reaches first:` }),
      el(
        "ul",
        { class: "chips" },
        ...users.map((u) =>
          el(
            "li",
            {},
            el("button", { type: "button", class: "chip", onclick: () => pickUser(u.user_id) }, u.user_id),
          ),
        ),
      ),
    );
    $("product-title").value = "";
    await refresh();
  } catch (error) {
    result.replaceChildren(el("p", { class: "error", text: error.message }));
  }
}

function christmasWeek() {
  // The year of the shopper's latest event when there is one (datasets are historical),
  // and never a future one: the server refuses times over a day ahead of its clock.
  const last = state.lastTimestamp;
  let year = last ? new Date(last * 1000).getUTCFullYear() : new Date().getUTCFullYear();
  if (Date.UTC(year, 11, 18, 12) > Date.now()) year -= 1;
  setDate(`${year}-12-18`);
}

async function start() {
  $("user-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const id = $("user-query").value.trim();
    if (id) pickUser(id);
  });
  let typing;
  $("user-query").addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => searchUsers().catch((e) => say(e.message, true)), 150);
  });
  // The server refuses times over a day ahead of its clock: no later day can be picked.
  $("context-date").max = new Date().toISOString().slice(0, 10);
  $("context-date").addEventListener("change", (event) => setDate(event.target.value));
  $("date-now").addEventListener("click", () => setDate(null));
  $("date-christmas").addEventListener("click", christmasWeek);
  for (const id of ["filter-stock", "filter-purchased", "filter-class", "result-count"]) {
    $(id).addEventListener("change", () => refresh());
  }
  $("item-form").addEventListener("submit", searchItems);
  $("product-form").addEventListener("submit", addProduct);
  // With --protect-reads every request needs the key: loading starts over once it is given.
  $("api-key").addEventListener("change", load);
  await load();
}

async function load() {
  try {
    await loadCatalogue();
    await searchUsers();
    await refresh();
  } catch (error) {
    say(error.message, true);
  }
}

document.addEventListener("DOMContentLoaded", start);
