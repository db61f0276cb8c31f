// The frontend: reads the backend's info and recent log entries, posts new ones.
// Every call goes through the proxy with a relative URL (/api/...). User data only ever reaches
// the page through textContent, never as HTML.
"use strict";

const PAGE_SIZE = 20;
let nextBefore = null;

const $ = (id) => document.getElementById(id);

async function api(path, options = {}) {
  const response = await fetch(path, {
    headers: { "Accept": "application/json", ...(options.body ? { "Content-Type": "application/json" } : {}) },
    ...options,
  });
  if (!response.ok) {
    let detail = "";
    try {
      const body = await response.json();
      detail = body.error || body.message || "";
    } catch (_) {
      // not JSON: keep the status only
    }
    throw new Error(`${response.status} ${response.statusText}${detail ? `: ${detail}` : ""}`);
  }
  return response.json();
}

function setStatus(text, kind) {
  const status = $("status");
  status.textContent = text;
  status.className = kind || "";
}

async function loadInfo() {
  const version = $("backend-version");
  try {
    const info = await api("/api/service/info");
    version.textContent = info.version;
    $("environment").textContent = info.environment;
    if (info.title) {
      $("title").textContent = info.title;
      document.title = info.title;
    }
    version.dataset.state = "ready";
  } catch (err) {
    version.textContent = "unavailable";
    version.dataset.state = "error";
    console.error("info:", err);
  }
}

async function loadFrontendVersion() {
  try {
    const response = await fetch("version.txt", { cache: "no-store" });
    if (response.ok) {
      $("frontend-version").textContent = (await response.text()).trim();
    }
  } catch (_) {
    // informational only
  }
}

function renderEntry(entry) {
  const item = document.createElement("li");
  item.dataset.id = String(entry.id);
  const message = document.createElement("p");
  message.className = "entry-message";
  message.textContent = entry.message;
  const meta = document.createElement("p");
  meta.className = "entry-meta";
  const when = new Date(entry.created_at);
  meta.textContent = `#${entry.id} · ${isNaN(when) ? entry.created_at : when.toLocaleString()} · ${entry.client_addr}`;
  item.append(message, meta);
  return item;
}

async function loadEntries({ append = false } = {}) {
  const list = $("entries");
  list.dataset.state = "loading";
  const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (append && nextBefore !== null) {
    params.set("before", String(nextBefore));
  }
  try {
    const page = await api(`/api/logs?${params}`);
    if (!append) {
      list.replaceChildren();
    }
    for (const entry of page.entries) {
      list.append(renderEntry(entry));
    }
    nextBefore = page.next_before ?? null;
    $("more").hidden = nextBefore === null;
    $("entries-empty").hidden = list.children.length > 0;
    list.dataset.state = "ready";
  } catch (err) {
    list.dataset.state = "error";
    setStatus(`Could not load entries (${err.message})`, "error");
  }
}

async function postEntry(event) {
  event.preventDefault();
  const input = $("message");
  const message = input.value.trim();
  if (!message) {
    setStatus("Write a message first.", "error");
    return;
  }
  const button = $("submit");
  button.disabled = true;
  setStatus("Posting…");
  try {
    const entry = await api("/api/log", { method: "POST", body: JSON.stringify({ message }) });
    input.value = "";
    setStatus(`Posted #${entry.id}.`, "ok");
    await loadEntries();
  } catch (err) {
    setStatus(`Not posted (${err.message})`, "error");
  } finally {
    button.disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("log-form").addEventListener("submit", postEntry);
  $("refresh").addEventListener("click", () => loadEntries());
  $("more").addEventListener("click", () => loadEntries({ append: true }));
  loadFrontendVersion();
  loadInfo();
  loadEntries();
});
