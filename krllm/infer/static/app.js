// krllm chat page: plain JavaScript, no build step. Streams from the same server's
// OpenAI-compatible /v1/chat/completions (SSE) and keeps the conversation in memory.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { model: null, history: [], controller: null };
const SETTINGS = ["system", "temperature", "top_p", "max_tokens", "repetition_penalty", "api_key"];

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api_key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  const content = document.createElement("span");
  content.className = "content";
  content.textContent = text;
  div.appendChild(content);
  $("messages").appendChild(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
  $("status").textContent = busy ? "생성 중…" : "";
}

async function loadModel() {
  try {
    const r = await fetch("/v1/models", { headers: headers() });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error ? body.error.message : r.statusText);
    state.model = body.data[0].id;
    $("model").textContent = "모델: " + state.model;
  } catch (e) {
    $("model").textContent = "모델 정보를 읽지 못했습니다: " + e.message;
  }
}

function numberOf(id) {
  const v = parseFloat($(id).value);
  return Number.isFinite(v) ? v : undefined;
}

// Read an SSE body and call onEvent(obj) for each `data:` JSON; resolves at [DONE] or end.
async function readSSE(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder("utf-8");
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        onEvent(JSON.parse(data));
      }
    }
  }
}

async function send(text) {
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...state.history, { role: "user", content: text });
  addMessage("user", text);
  const bubble = addMessage("assistant", "");
  bubble.dataset.state = "streaming";
  const body = {
    model: state.model || undefined,
    messages,
    stream: true,
    stream_options: { include_usage: true },
    temperature: numberOf("temperature"),
    top_p: numberOf("top_p"),
    max_tokens: numberOf("max_tokens"),
    repetition_penalty: numberOf("repetition_penalty"),
  };
  state.controller = new AbortController();
  setBusy(true);
  let reply = "";
  let finish = null;
  let used = null;
  const started = performance.now();
  try {
    const r = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: state.controller.signal,
    });
    if (!r.ok) {
      const err = await r.json().catch(() => ({}));
      throw new Error(err.error ? err.error.message : r.status + " " + r.statusText);
    }
    await readSSE(r, (chunk) => {
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) used = chunk.usage;
      const choice = chunk.choices && chunk.choices[0];
      if (!choice) return;
      if (choice.delta && choice.delta.content) {
        reply += choice.delta.content;
        bubble.firstChild.textContent = reply;
        bubble.dataset.chunks = String(Number(bubble.dataset.chunks || 0) + 1);
        bubble.scrollIntoView({ block: "end" });
      }
      if (choice.finish_reason) finish = choice.finish_reason;
    });
    state.history.push({ role: "user", content: text }, { role: "assistant", content: reply });
    const secs = (performance.now() - started) / 1000;
    const meta = document.createElement("span");
    meta.className = "meta";
    const n = used ? used.completion_tokens : null;
    meta.textContent = (n !== null ? `${n} 토큰 · ${(n / secs).toFixed(1)} 토큰/초 · ` : "") +
      (finish === "length" ? "길이 제한에서 멈춤" : "완료");
    bubble.appendChild(meta);
  } catch (e) {
    if (e.name === "AbortError") {
      state.history.push({ role: "user", content: text }, { role: "assistant", content: reply });
    } else {
      addMessage("error", "오류: " + e.message);
    }
  } finally {
    bubble.dataset.state = "done";
    state.controller = null;
    setBusy(false);
  }
}

function saveSettings() {
  for (const id of SETTINGS) localStorage.setItem("krllm." + id, $(id).value);
}

function loadSettings() {
  for (const id of SETTINGS) {
    const v = localStorage.getItem("krllm." + id);
    if (v !== null) $(id).value = v;
  }
}

$("composer").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("message").value.trim();
  if (!text || state.controller) return;
  $("message").value = "";
  send(text);
});

$("message").addEventListener("keydown", (ev) => {
  // Enter sends; but not while a Korean IME is still composing a syllable.
  if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
    ev.preventDefault();
    $("composer").requestSubmit();
  }
});

$("stop").addEventListener("click", () => state.controller && state.controller.abort());
$("reset").addEventListener("click", () => {
  if (state.controller) state.controller.abort();
  state.history = [];
  $("messages").innerHTML = "";
});
for (const id of SETTINGS) $(id).addEventListener("change", saveSettings);
$("api_key").addEventListener("change", loadModel);

loadSettings();
loadModel();
