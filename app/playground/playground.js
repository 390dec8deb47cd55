// The clip-proxy playground: one chat, streamed, with what went upstream beside it.
//
// Plain browser JavaScript, no build step and no library: it calls this proxy's public API
// the way any chat client would (JSON with data: URLs, stream: true) and reads the SSE
// stream itself. Everything the model or the proxy says is put in the page as text
// (textContent / text nodes), never parsed as HTML.
"use strict";

(() => {
  const CHAT_URL = "/v1/chat/completions";
  const CONFIG_URL = "/playground/config.json";
  const KEY_STORAGE = "clip-proxy-playground-key";

  const $ = (id) => document.getElementById(id);
  const ui = {
    keyRow: $("key-row"),
    key: $("api-key"),
    dropZone: $("drop-zone"),
    images: $("image-input"),
    thumbnails: $("thumbnails"),
    attached: $("attached"),
    prompt: $("prompt-input"),
    preset: $("preset-select"),
    format: $("format-select"),
    formatNote: $("format-note"),
    send: $("send-button"),
    stop: $("stop-button"),
    reset: $("new-button"),
    status: $("status"),
    error: $("error-output"),
    history: $("history"),
    live: $("live-turn"),
    reasoning: $("reasoning-output"),
    answer: null, // the answer of the turn being streamed, in the conversation (startTurn)
    timing: $("server-timing").querySelector("tbody"),
    cache: $("cache-status"),
    usage: $("usage"),
    upstreamSize: $("upstream-size"),
    upstream: $("upstream-body"),
    readable: $("upstream-readable"),
    rawToggle: $("raw-toggle"),
    imageRoutes: $("image-routes"),
  };

  // The conversation as it is sent: earlier user messages keep their image_url parts, so
  // the proxy turns those images into retained embeddings on later turns.
  const state = { history: [], pending: [], busy: false, config: {}, abort: null };

  // ---- set-up --------------------------------------------------------------------------

  async function loadConfig() {
    try {
      const response = await fetch(CONFIG_URL, { cache: "no-store" });
      if (response.ok) state.config = await response.json();
    } catch (_) {
      // Without it the page still works; a 401 reveals the key field.
    }
    if (state.config.auth_required) showKeyField(false);
    if (state.config.prompt_format) {
      ui.formatNote.textContent = `(server default: ${state.config.prompt_format})`;
    }
  }

  function showKeyField(focus) {
    ui.keyRow.hidden = false;
    if (focus) ui.key.focus();
  }

  function storedKey() {
    try {
      return sessionStorage.getItem(KEY_STORAGE) || "";
    } catch (_) {
      return "";
    }
  }

  function rememberKey() {
    const key = ui.key.value.trim();
    try {
      if (key) sessionStorage.setItem(KEY_STORAGE, key);
      else sessionStorage.removeItem(KEY_STORAGE);
    } catch (_) {
      // Storage refused (private mode): the key still works for this page's life.
    }
  }

  // ---- images --------------------------------------------------------------------------

  function readAsDataUrl(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(file);
    });
  }

  // A PDF or a text file goes as a `file` part (the proxy reads it as words); the rest as
  // images. PDFs are told by their first bytes, text files by their type or name.
  const DOCUMENT_NAME = /\.(pdf|txt|md|markdown|csv|json)$/i;

  function isDocument(file) {
    const type = file.type || "";
    return (
      type === "application/pdf" ||
      type === "application/json" ||
      type.startsWith("text/") ||
      (!type.startsWith("image/") && DOCUMENT_NAME.test(file.name || ""))
    );
  }

  // Pages of a PDF as its page objects say (`/Type /Page`); null when they are packed in
  // object streams, where only the proxy can count them.
  async function pdfPages(file) {
    const bytes = new Uint8Array(await file.arrayBuffer());
    let text = "";
    for (let start = 0; start < bytes.length; start += 65536) {
      text += String.fromCharCode.apply(null, bytes.subarray(start, start + 65536));
    }
    if (!text.startsWith("%PDF-")) return null;
    const found = text.match(/\/Type\s*\/Page(?![a-zA-Z])/g);
    return found ? found.length : null;
  }

  async function addFiles(files) {
    for (const file of files) {
      try {
        const url = await readAsDataUrl(file);
        if (isDocument(file)) {
          const pages = await pdfPages(file);
          state.pending.push({
            kind: "document",
            name: file.name || "document",
            url,
            size: file.size,
            pages,
          });
          continue;
        }
        state.pending.push({ name: file.name || "pasted image", url, size: file.size });
      } catch (error) {
        showError({ message: `could not read ${file.name}: ${error}`, type: "client_error" });
      }
    }
    renderPending();
  }

  function thumbnail(url, label) {
    const image = document.createElement("img");
    image.src = url;
    image.alt = label;
    image.title = label;
    return image;
  }

  function fileChip(name, pages) {
    const chip = document.createElement("span");
    chip.className = "file-chip";
    chip.dataset.testid = "file-chip";
    const count = pages ? ` · ${pages} page${pages === 1 ? "" : "s"}` : "";
    chip.textContent = `📄 ${name}${count}`;
    chip.title = name;
    return chip;
  }

  function renderPending() {
    ui.thumbnails.replaceChildren();
    state.pending.forEach((item, index) => {
      const entry = document.createElement("li");
      entry.append(
        item.kind === "document" ? fileChip(item.name, item.pages) : thumbnail(item.url, item.name)
      );
      const caption = document.createElement("span");
      caption.textContent = `${item.name} (${formatBytes(item.size)})`;
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "secondary";
      remove.textContent = "remove";
      remove.addEventListener("click", () => {
        state.pending.splice(index, 1);
        renderPending();
      });
      entry.append(caption, remove);
      ui.thumbnails.append(entry);
    });
    const count = state.pending.length;
    const names = state.pending.map((item) => item.name).join(", ");
    const bytes = formatBytes(state.pending.reduce((sum, item) => sum + item.size, 0));
    ui.attached.textContent = count
      ? `${count} image${count === 1 ? "" : "s"} attached (${bytes}): ${names}`
      : "No images attached.";
  }

  function formatBytes(size) {
    if (size >= 1024 * 1024) return `${(size / 1024 / 1024).toFixed(1)} MiB`;
    if (size >= 1024) return `${(size / 1024).toFixed(1)} KiB`;
    return `${size} B`;
  }

  // ---- sending -------------------------------------------------------------------------

  function requestHeaders() {
    const headers = { "Content-Type": "application/json", Accept: "text/event-stream" };
    if (ui.preset.value) headers["X-Clip-Proxy-Preset"] = ui.preset.value;
    if (ui.format.value) headers["X-Clip-Proxy-Format"] = ui.format.value;
    const key = ui.key.value.trim();
    if (key) headers.Authorization = `Bearer ${key}`;
    return headers;
  }

  function userMessage(text, images) {
    const content = [];
    if (text) content.push({ type: "text", text });
    for (const image of images) {
      if (image.kind === "document") {
        content.push({ type: "file", file: { filename: image.name, file_data: image.url } });
      } else {
        content.push({ type: "image_url", image_url: { url: image.url } });
      }
    }
    return { role: "user", content };
  }

  async function send() {
    if (state.busy) return;
    const text = ui.prompt.value.trim();
    if (!text && state.pending.length === 0) {
      setStatus("Type a question or add an image first.");
      return;
    }
    const message = userMessage(text, state.pending);
    const body = {
      messages: [...state.history, message],
      stream: true,
      stream_options: { include_usage: true },
    };
    const headers = requestHeaders();
    clearTurn();
    startTurn(message);
    setBusy(true);
    setStatus("Sending...");
    const started = performance.now();
    // Stop closes the connection; the proxy then cancels its upstream request.
    state.abort = new AbortController();
    const signal = state.abort.signal;
    let response;
    try {
      response = await fetch(CHAT_URL, {
        method: "POST",
        headers,
        body: JSON.stringify(body),
        signal,
      });
    } catch (error) {
      markUnsent();
      if (signal.aborted) setStatus("Stopped.");
      else {
        showError({ message: `the proxy could not be reached: ${error}`, type: "network_error" });
        setStatus("Failed.");
      }
      setBusy(false);
      return;
    }
    showServerTiming(
      response.headers.get("Server-Timing"),
      response.ok ? countImages(body.messages) : null,
    );
    // The dry run shows what went upstream, also when the upstream refused it. Not after a
    // refused key or an overload answer: the dry run would only be refused the same way.
    if (![401, 429, 503].includes(response.status)) dryRun(body, headers);
    if (!response.ok) {
      markUnsent();
      showError(await readError(response), response.status);
      if (response.status === 401) showKeyField(true);
      setStatus("Failed.");
      setBusy(false);
      return;
    }
    const answer = await readStream(response, signal);
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    if (signal.aborted) {
      markUnsent();
      setStatus(`Stopped after ${seconds} s.`);
    } else if (answer === null) {
      markUnsent();
      setStatus(`Failed after ${seconds} s.`);
    } else {
      commitTurn(message, answer);
      setStatus(`Done in ${seconds} s.`);
    }
    setBusy(false);
  }

  // The same request as a dry run: the proxy answers with the body it would send upstream.
  async function dryRun(body, headers) {
    ui.upstreamSize.textContent = "(asking the proxy...)";
    try {
      const response = await fetch(CHAT_URL, {
        method: "POST",
        headers: { ...headers, "X-Clip-Proxy-Dry-Run": "true", Accept: "application/json" },
        body: JSON.stringify(body),
      });
      const text = await response.text();
      if (!response.ok) {
        ui.upstreamSize.textContent = "(the dry run failed: see the error above)";
        return;
      }
      const upstreamBody = JSON.parse(text);
      ui.upstream.textContent = JSON.stringify(upstreamBody, null, 2);
      const readable = document.createDocumentFragment();
      readableFields(upstreamBody, "", readable);
      ui.readable.replaceChildren(readable);
      ui.rawToggle.hidden = false;
      const characters = Array.from(text).length;
      const parts = [`${characters.toLocaleString("en")} characters`];
      const promptChars = response.headers.get("X-Clip-Proxy-Prompt-Chars");
      if (promptChars) parts.push(`prompt ${Number(promptChars).toLocaleString("en")}`);
      const applied = appliedFormat(upstreamBody);
      if (applied) parts.push(`format ${applied}`);
      if (applied && ui.format.value && applied !== ui.format.value) {
        parts.push(`this server does not switch formats per request`);
      }
      ui.upstreamSize.textContent = `(${parts.join(", ")})`;
      showImageRoutes(response.headers.get("X-Clip-Proxy-Image-Routes"), upstreamBody);
    } catch (error) {
      ui.upstreamSize.textContent = `(the dry run failed: ${error})`;
    }
  }

  // The body as paths and values, each string as its text (real line breaks, no escapes):
  // `messages[0].content` over the prompt as R1 reads it. The raw JSON is one click away.
  function readableFields(value, path, out) {
    if (typeof value === "string") {
      const label = document.createElement("div");
      label.className = "path";
      label.textContent = `${path}:`;
      const text = document.createElement("div");
      text.className = "string";
      text.textContent = value;
      out.append(label, text);
    } else if (Array.isArray(value)) {
      value.forEach((item, index) => readableFields(item, `${path}[${index}]`, out));
    } else if (value && typeof value === "object") {
      for (const [key, item] of Object.entries(value)) {
        readableFields(item, path ? `${path}.${key}` : key, out);
      }
    } else {
      const line = document.createElement("div");
      line.className = "path";
      line.textContent = `${path}: ${JSON.stringify(value)}`;
      out.append(line);
    }
  }

  function showRaw(raw) {
    ui.upstream.hidden = !raw;
    ui.readable.hidden = raw;
    ui.rawToggle.setAttribute("aria-pressed", String(raw));
    ui.rawToggle.textContent = raw ? "readable" : "raw JSON";
  }

  // Which way each image went (X-Clip-Proxy-Image-Routes) and a describer's description of
  // it, read from the body the upstream received. Text only: a description is model output.
  function showImageRoutes(header, upstreamBody) {
    ui.imageRoutes.replaceChildren();
    if (!header) return;
    const descriptions = {};
    for (const message of upstreamBody.messages || []) {
      const texts = Array.isArray(message.content)
        ? message.content.filter((part) => part && part.type === "text").map((part) => part.text)
        : [String(message.content || "")];
      for (const text of texts) {
        const blocks = /<image index="(\d+)"[^>]*>([\s\S]*?)<\/image>/g;
        for (const match of text.matchAll(blocks)) {
          const line = /^Description: (.*)$/m.exec(match[2]);
          if (line) descriptions[match[1]] = unescapeText(line[1]);
        }
      }
    }
    for (const entry of header.split(",")) {
      const [index, route] = entry.split("=");
      const item = document.createElement("li");
      item.dataset.route = route;
      let said = route;
      if (route.startsWith("described:")) {
        said = `described by ${route.slice(10)}: ${descriptions[index] || "(shown above)"}`;
      } else if (route === "fallback") {
        said = "no description: every describer failed (OCR, tags and caption only)";
      } else if (route === "passthrough") {
        said = "sent as the image itself (the upstream sees)";
      } else if (route === "bridge") {
        said = "CLIP and the engine's words";
      }
      item.textContent = `image ${index}: ${said}`;
      ui.imageRoutes.append(item);
    }
  }

  function unescapeText(text) {
    return text.replaceAll("&lt;", "<").replaceAll("&gt;", ">").replaceAll("&amp;", "&");
  }

  function appliedFormat(upstreamBody) {
    let inline = false;
    for (const message of upstreamBody.messages || []) {
      if (Array.isArray(message.content)) {
        if (message.content.some((part) => part && part.type === "image_embedding")) {
          return "content_part";
        }
      } else if (typeof message.content === "string" && /<(retain_)?image(_emb)?>/.test(message.content)) {
        inline = true;
      }
    }
    return inline ? "inline" : null;
  }

  // ---- the SSE stream ------------------------------------------------------------------

  // Yields the data of each event (its `data:` lines joined), as the bytes arrive.
  async function* sseData(stream) {
    const reader = stream.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      let text = buffer + (done ? decoder.decode() : decoder.decode(value, { stream: true }));
      // A CR at the end may be the first half of CRLF: keep it for the next read.
      const held = !done && text.endsWith("\r") ? "\r" : "";
      if (held) text = text.slice(0, -1);
      text = text.replace(/\r\n?/g, "\n");
      let end;
      while ((end = text.indexOf("\n\n")) >= 0) {
        const data = eventData(text.slice(0, end));
        text = text.slice(end + 2);
        if (data !== null) yield data;
      }
      buffer = text + held;
      if (done) {
        const data = eventData(buffer);
        if (data !== null) yield data;
        return;
      }
    }
  }

  function eventData(block) {
    const lines = [];
    for (const line of block.split("\n")) {
      if (!line.startsWith("data:")) continue; // comments (pings), event:, id:, retry:
      const value = line.slice(5);
      lines.push(value.startsWith(" ") ? value.slice(1) : value);
    }
    return lines.length ? lines.join("\n") : null;
  }

  // Streams the reply into the two panes; the answer text, or null when the stream failed.
  async function readStream(response, signal) {
    let answer = "";
    let finished = false;
    setStatus("Waiting for the model...");
    try {
      for await (const data of sseData(response.body)) {
        if (data === "[DONE]") {
          finished = true;
          break;
        }
        let chunk;
        try {
          chunk = JSON.parse(data);
        } catch (_) {
          showError({ message: `not JSON in the stream: ${data.slice(0, 200)}`, type: "stream_error" });
          return null;
        }
        if (chunk.error) {
          showError(chunk.error);
          return null;
        }
        if (chunk.usage) showUsage(chunk.usage);
        const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
        if (!delta) continue;
        if (delta.reasoning_content) {
          appendText(ui.reasoning, delta.reasoning_content);
          setStatus("Thinking...");
        }
        if (delta.content) {
          answer += delta.content;
          appendText(ui.answer, delta.content);
          setStatus("Answering...");
        }
      }
    } catch (error) {
      if (!signal.aborted) showError({ message: `the stream broke: ${error}`, type: "network_error" });
      return null;
    }
    if (!finished) {
      showError({ message: "the stream ended before [DONE]", type: "stream_error" });
      return null;
    }
    return answer;
  }

  function appendText(pane, text) {
    const atBottom = pane.scrollTop + pane.clientHeight >= pane.scrollHeight - 4;
    pane.append(document.createTextNode(text));
    if (atBottom) pane.scrollTop = pane.scrollHeight;
  }

  // ---- errors --------------------------------------------------------------------------

  async function readError(response) {
    const text = await response.text();
    try {
      const body = JSON.parse(text);
      if (body && body.error) return body.error;
    } catch (_) {
      // not JSON: an intermediary's page, shown as text below
    }
    return { message: text.slice(0, 2000) || response.statusText, type: "http_error", code: null };
  }

  function showError(error, status) {
    ui.error.replaceChildren();
    const title = document.createElement("strong");
    title.textContent = status ? `Error ${status}` : "Error";
    ui.error.append(title);
    const list = document.createElement("dl");
    for (const field of ["message", "type", "code", "param"]) {
      const value = error[field];
      if (value === undefined || value === null || value === "") continue;
      const name = document.createElement("dt");
      name.textContent = field;
      const text = document.createElement("dd");
      text.dataset.field = field;
      text.textContent = typeof value === "string" ? value : JSON.stringify(value);
      list.append(name, text);
    }
    ui.error.append(list);
    ui.error.hidden = false;
  }

  // ---- timing, cache, usage ------------------------------------------------------------

  // `images;dur=1.2, fetch;dur=0.1, proxy;dur=8.3;desc="until response headers"`
  function parseServerTiming(header) {
    const entries = [];
    for (const raw of splitOutsideQuotes(header || "", ",")) {
      const [name, ...params] = splitOutsideQuotes(raw, ";").map((part) => part.trim());
      if (!name) continue;
      const entry = { name, dur: null, desc: "" };
      for (const param of params) {
        const eq = param.indexOf("=");
        if (eq < 0) continue;
        const key = param.slice(0, eq).trim().toLowerCase();
        let value = param.slice(eq + 1).trim();
        if (value.startsWith('"') && value.endsWith('"')) value = value.slice(1, -1).replace(/\\(.)/g, "$1");
        if (key === "dur") entry.dur = Number(value);
        if (key === "desc") entry.desc = value;
      }
      entries.push(entry);
    }
    return entries;
  }

  function splitOutsideQuotes(text, separator) {
    const parts = [];
    let current = "";
    let quoted = false;
    for (let i = 0; i < text.length; i += 1) {
      const char = text[i];
      if (char === "\\" && quoted && i + 1 < text.length) {
        current += char + text[i + 1];
        i += 1;
        continue;
      }
      if (char === '"') quoted = !quoted;
      if (char === separator && !quoted) {
        parts.push(current);
        current = "";
      } else {
        current += char;
      }
    }
    parts.push(current);
    return parts;
  }

  function showServerTiming(header, images) {
    const entries = parseServerTiming(header);
    ui.timing.replaceChildren();
    for (const entry of entries) {
      const row = document.createElement("tr");
      for (const value of [entry.name, entry.dur === null ? "" : entry.dur.toFixed(1), entry.desc]) {
        const cell = document.createElement("td");
        cell.textContent = value;
        row.append(cell);
      }
      ui.timing.append(row);
    }
    // A cached image skips decoding and encoding: their stages appear only on a miss.
    const stages = new Set(entries.map((entry) => entry.name));
    let verdict;
    if (images === null) {
      verdict = ["unknown", "The request failed: no cache verdict."];
    } else if (images === 0) {
      verdict = ["none", "No images in this request."];
    } else if (!header) {
      verdict = ["unknown", "The response carried no Server-Timing header."];
    } else if (stages.has("encode") || stages.has("decode")) {
      verdict = ["miss", `Cache: miss. At least one of ${images} image(s) was decoded and encoded now.`];
    } else {
      verdict = ["hit", `Cache: hit. All ${images} image(s) came from the cache (no decode, no encode).`];
    }
    ui.cache.dataset.cache = verdict[0];
    ui.cache.textContent = verdict[1];
  }

  function countImages(messages) {
    let count = 0;
    for (const message of messages) {
      if (Array.isArray(message.content)) {
        count += message.content.filter((part) => part.type === "image_url").length;
      }
    }
    return count;
  }

  function showUsage(usage) {
    const parts = [];
    if (usage.prompt_tokens !== undefined) parts.push(`prompt ${usage.prompt_tokens}`);
    if (usage.completion_tokens !== undefined) parts.push(`completion ${usage.completion_tokens}`);
    ui.usage.textContent = parts.length ? `Tokens: ${parts.join(", ")}` : "";
  }

  // ---- the conversation ----------------------------------------------------------------

  // The turn being answered, shown once: in the conversation, its answer streaming in.
  function startTurn(message) {
    // Only the newest answer carries the hook tests and tools read.
    for (const old of document.querySelectorAll('[data-testid="answer-output"]')) {
      old.removeAttribute("data-testid");
    }
    renderMessage(message, ui.live);
    const entry = renderMessage({ role: "assistant", content: "" }, ui.live);
    ui.answer = entry.querySelector("p");
    ui.answer.dataset.testid = "answer-output";
  }

  // A stopped or failed turn stays in view, marked, and is not part of the conversation.
  function markUnsent() {
    for (const entry of ui.live.children) entry.classList.add("unsent");
  }

  function commitTurn(message, answer) {
    state.history.push(message, { role: "assistant", content: answer });
    ui.history.append(...Array.from(ui.live.children)); // moved, not copied: shown once
    state.pending = [];
    renderPending();
    ui.prompt.value = "";
  }

  function renderMessage(message, list) {
    const entry = document.createElement("li");
    entry.className = message.role;
    const role = document.createElement("span");
    role.className = "role";
    role.textContent = message.role;
    entry.append(role);
    const parts = Array.isArray(message.content)
      ? message.content
      : [{ type: "text", text: message.content }];
    for (const part of parts) {
      if (part.type === "text") {
        const text = document.createElement("p");
        text.textContent = part.text;
        entry.append(text);
      } else if (part.type === "image_url") {
        entry.append(thumbnail(part.image_url.url, "image sent in this message"));
      } else if (part.type === "file") {
        entry.append(fileChip(part.file.filename, null));
      }
    }
    list.append(entry);
    return entry;
  }

  function newConversation() {
    if (state.busy) return;
    state.history = [];
    ui.history.replaceChildren();
    clearTurn();
    setStatus("New conversation.");
  }

  function clearTurn() {
    ui.error.hidden = true;
    ui.error.replaceChildren();
    ui.reasoning.replaceChildren();
    ui.live.replaceChildren();
    ui.answer = null;
    ui.timing.replaceChildren();
    ui.cache.textContent = "";
    ui.usage.textContent = "";
    ui.upstream.replaceChildren();
    ui.readable.replaceChildren();
    ui.rawToggle.hidden = true;
    ui.upstreamSize.textContent = "";
  }

  function setBusy(busy) {
    state.busy = busy;
    ui.send.disabled = busy;
    ui.stop.disabled = !busy;
    if (!busy) state.abort = null;
    document.body.classList.toggle("busy", busy);
  }

  function setStatus(text) {
    ui.status.textContent = text;
  }

  // ---- wiring --------------------------------------------------------------------------

  function imageFiles(list) {
    return Array.from(list || []).filter(
      (file) => !file.type || file.type.startsWith("image/") || isDocument(file)
    );
  }

  ui.key.value = storedKey();
  ui.key.addEventListener("input", rememberKey);
  ui.images.addEventListener("change", async () => {
    await addFiles(Array.from(ui.images.files));
    ui.images.value = ""; // picking the same file again fires change again
  });
  ui.dropZone.addEventListener("dragover", (event) => {
    event.preventDefault();
    ui.dropZone.classList.add("over");
  });
  ui.dropZone.addEventListener("dragleave", () => ui.dropZone.classList.remove("over"));
  ui.dropZone.addEventListener("drop", (event) => {
    event.preventDefault();
    ui.dropZone.classList.remove("over");
    addFiles(imageFiles(event.dataTransfer.files));
  });
  // A file dropped beside the zone must not navigate away from the conversation.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
  document.addEventListener("paste", (event) => {
    const files = imageFiles(event.clipboardData && event.clipboardData.files);
    if (files.length) {
      event.preventDefault();
      addFiles(files);
    }
  });
  ui.prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) send();
  });
  ui.send.addEventListener("click", send);
  ui.rawToggle.addEventListener("click", () => showRaw(ui.upstream.hidden));
  ui.reset.addEventListener("click", newConversation);
  ui.stop.addEventListener("click", () => state.abort && state.abort.abort());
  loadConfig();
})();
