// Chat view. Model output is untrusted: it only ever reaches the page through textContent.
import { apiFetch, errorText, getJSON, sseEvents } from "./api.js";

const STORE = "sluice.chat";
const $ = (id) => document.getElementById(id);
const PARAMS = ["temperature", "top_p", "max_tokens", "seed"];
let history = [];  // [{role, content}] of this conversation, system prompt excluded
let controller = null;

function save() {
  const settings = { model: $("model").value, system: $("system").value };
  PARAMS.forEach((p) => { settings[p] = $(p).value; });
  localStorage.setItem(STORE, JSON.stringify({ history, settings }));
}

function restore() {
  try {
    const saved = JSON.parse(localStorage.getItem(STORE) || "{}");
    history = Array.isArray(saved.history) ? saved.history : [];
    const s = saved.settings || {};
    if (typeof s.system === "string") $("system").value = s.system;
    PARAMS.forEach((p) => { if (s[p] !== undefined) $(p).value = s[p]; });
    return s.model;
  } catch {
    history = [];
    return undefined;
  }
}

function bubble(role, text) {
  const li = document.createElement("li");
  li.className = `msg ${role}`;
  const label = document.createElement("span");
  label.className = "role";
  label.textContent = role;
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  li.append(label, body);
  $("messages").append(li);
  li.scrollIntoView({ block: "end" });
  return body;
}

export async function loadModels(preferred) {
  const list = await getJSON("/v1/models");
  const select = $("model");
  const current = preferred || select.value;
  select.replaceChildren();
  for (const m of list.data) {
    const option = document.createElement("option");
    option.value = m.id;
    option.textContent = m.status && m.status !== "loaded" ? `${m.id} (${m.status})` : m.id;
    select.append(option);
  }
  if ([...select.options].some((o) => o.value === current)) select.value = current;
}

function requestBody() {
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...history);
  const body = { model: $("model").value, messages, stream: true };
  const num = (id) => $(id).value.trim() === "" ? undefined : Number($(id).value);
  const fields = { temperature: num("temperature"), top_p: num("top_p"), max_tokens: num("max_tokens"),
                   seed: num("seed") };
  for (const [k, v] of Object.entries(fields)) if (v !== undefined && !Number.isNaN(v)) body[k] = v;
  return body;
}

function busy(on) {
  $("send").disabled = on;
  $("stop").disabled = !on;
}

async function send(text) {
  history.push({ role: "user", content: text });
  bubble("user", text);
  const out = bubble("assistant", "");
  out.parentElement.dataset.state = "streaming";
  controller = new AbortController();
  busy(true);
  $("status").textContent = "generating…";
  let answer = "";
  let finish = "";
  try {
    const response = await apiFetch("/v1/chat/completions", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(requestBody()), signal: controller.signal });
    if (!response.ok) throw new Error(await errorText(response));
    for await (const chunk of sseEvents(response)) {
      const choice = chunk.choices?.[0];
      if (!choice) continue;
      answer += choice.delta?.content ?? "";
      out.textContent = answer;
      finish = choice.finish_reason || finish;
    }
    $("status").textContent = finish ? `done (${finish})` : "done";
  } catch (err) {
    $("status").textContent = err.name === "AbortError" ? "stopped" : `error: ${err.message}`;
  } finally {
    out.parentElement.dataset.state = "done";
    if (answer) history.push({ role: "assistant", content: answer });
    controller = null;
    busy(false);
    save();
  }
}

export async function setupChat() {
  const preferred = restore();
  history.forEach((m) => bubble(m.role, m.content));
  $("composer").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = $("prompt").value.trim();
    if (!text || controller) return;
    $("prompt").value = "";
    send(text);
  });
  $("prompt").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) {
      ev.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("stop").addEventListener("click", () => controller?.abort());
  $("clear").addEventListener("click", () => {
    history = [];
    $("messages").replaceChildren();
    $("status").textContent = "";
    save();
  });
  for (const id of ["model", "system", ...PARAMS]) $(id).addEventListener("change", save);
  try {
    await loadModels(preferred);
  } catch (err) {
    $("status").textContent = `cannot list models: ${err.message}`;
  }
}
