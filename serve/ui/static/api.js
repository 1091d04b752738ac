// API access for the page: the key (asked once, kept in sessionStorage) and JSON/SSE helpers.
const KEY = "sluice.apiKey";
const keyForm = () => document.getElementById("key-form");
let keyWaiters = [];

export function setupKeyForm() {
  keyForm().addEventListener("submit", (ev) => {
    ev.preventDefault();
    const value = document.getElementById("key-input").value.trim();
    if (!value) return;
    sessionStorage.setItem(KEY, value);
    keyForm().hidden = true;
    const waiters = keyWaiters;
    keyWaiters = [];
    waiters.forEach((resolve) => resolve());
  });
}

// Resolves once the user has entered a key (the caller then retries its request).
function askForKey() {
  sessionStorage.removeItem(KEY);
  keyForm().hidden = false;
  document.getElementById("key-input").focus();
  return new Promise((resolve) => keyWaiters.push(resolve));
}

export async function apiFetch(path, options = {}) {
  for (;;) {
    const headers = { ...(options.headers || {}) };
    const key = sessionStorage.getItem(KEY);
    if (key) headers.Authorization = `Bearer ${key}`;
    const response = await fetch(path, { ...options, headers });
    if (response.status !== 401) return response;
    await askForKey();
  }
}

export async function getJSON(path) {
  const response = await apiFetch(path);
  if (!response.ok) throw new Error(await errorText(response));
  return response.json();
}

export async function errorText(response) {
  try {
    const body = await response.json();
    return `${response.status}: ${body.error?.message ?? JSON.stringify(body)}`;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

// Yields each JSON payload of a text/event-stream body until [DONE].
export async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of frame.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}
