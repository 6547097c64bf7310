// Service Gateway's web page (GET /ui): plain JavaScript, no framework, no build step.
//
// Everything the API sends is shown with textContent or DOM nodes, never innerHTML. The token is kept
// in sessionStorage and sent as "Authorization: Bearer ..." with each call. Live progress comes from
// GET /jobs/<uuid>/events, read with fetch() (EventSource cannot send that header) and parsed here.
"use strict";

(() => {
  const API = document.querySelector('meta[name="sg-api-root"]').content || "/";
  const FINISHED = new Set(["SUCCESS", "FAILURE", "REVOKED", "EXPIRED"]);
  const TOKEN_KEY = "sg.token";
  // Each stream holds one of the browser's ~6 connections to this host: leave room for the other calls.
  const MAX_STREAMS = 3;
  const PAGE_SIZE = 20;
  const REFRESH_BUSY_MS = 5000;   // list refresh while some unfinished job has no stream of its own
  const REFRESH_IDLE_MS = 20000;  // otherwise (jobs submitted elsewhere still show up)

  const state = {
    token: null,
    services: new Map(),
    fields: [],
    jobs: new Map(),   // uuid -> {job, status, progress, row, parts, stream, lastEventId}
    cursor: undefined,   // next_cursor of the last page loaded; undefined: none loaded yet, null: no more
    selected: null,
    refreshTimer: null,
  };

  const $ = (id) => document.getElementById(id);

  // -- DOM helpers: text is always text ----------------------------------------------------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "value" || key === "checked") node[key] = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function say(node, text, kind) {
    node.textContent = text || "";
    node.className = "message" + (text && kind ? " " + kind : "");
  }

  const sleep = (ms, signal) => new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    if (signal) signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });

  const when = (iso) => (iso ? new Date(iso).toLocaleString() : "");

  // -- the API -------------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, body) {
      super((body && typeof body.description === "string" && body.description) || `HTTP ${status}`);
      this.status = status;
      this.code = body && body.code;
    }
  }

  function authHeaders(extra) {
    const headers = { ...extra };
    if (state.token) headers.Authorization = "Bearer " + state.token;
    return headers;
  }

  async function failed(response) {
    const body = await response.json().catch(() => null);
    const error = new ApiError(response.status, body);
    if (response.status === 401 && state.token) signOut(error.message);
    return error;
  }

  async function api(path, { method = "GET", body } = {}) {
    const init = { method, headers: authHeaders({ Accept: "application/json" }) };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(API + path, init);
    if (!response.ok) throw await failed(response);
    return response.status === 204 ? null : response.json();
  }

  // -- signing in and out --------------------------------------------------------------------------
  function tokenClaims(token) {
    try {
      const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4)));
    } catch (e) {
      return {};
    }
  }

  async function useToken(token) {
    state.token = token.replace(/^\s*Bearer\s+/i, "").replace(/\s+/g, "");   // as pasted from a header
    sessionStorage.setItem(TOKEN_KEY, state.token);
    try {
      await loadServices();       // checks the token too: a 401 signs out with the reason
    } catch (e) {
      if (state.token) say($("login-message"), e.message, "error");
      return;
    }
    const claims = tokenClaims(state.token);
    const parts = [`Signed in as ${claims.sub || "?"}`];
    if (claims.admin) parts.push("(admin)");
    if (claims.exp) parts.push(`until ${new Date(claims.exp * 1000).toLocaleString()}`);
    $("whoami-text").textContent = parts.join(" ");
    $("whoami").hidden = false;
    $("login").hidden = true;
    $("app").hidden = false;
    say($("login-message"), "");
    $("token-input").value = "";
    $("client-secret").value = "";
    await loadJobs(true);
  }

  function signOut(reason) {
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    for (const entry of state.jobs.values()) if (entry.stream) entry.stream.abort();
    state.jobs.clear();
    state.cursor = undefined;
    clearTimeout(state.refreshTimer);
    $("job-rows").replaceChildren();
    closeDetail();
    $("app").hidden = true;
    $("whoami").hidden = true;
    $("login").hidden = false;
    say($("login-message"), reason || "Signed out.", reason ? "error" : "");
  }

  async function clientLogin(event) {
    event.preventDefault();
    const message = $("login-message");
    say(message, "Signing in…");
    try {
      state.token = null;
      const data = await api("auth/access-token", {
        method: "POST", body: { client_id: $("client-id").value.trim(), secret: $("client-secret").value } });
      await useToken(data.access_token);
    } catch (e) {
      say(message, e.message, "error");
    }
  }

  // -- the submit form, generated from each service's parameter JSON Schema ------------------------
  async function loadServices() {
    const data = await api("services");
    state.services = new Map(data.services.map((s) => [s.name, s]));
    const select = $("service");
    const previous = select.value;
    const services = data.services.filter((s) => s.kind !== "pipeline");
    const pipelines = data.services.filter((s) => s.kind === "pipeline");
    const option = (s) => el("option", { value: s.name }, s.name);
    select.replaceChildren(...services.map(option));
    if (pipelines.length) select.append(el("optgroup", { label: "Pipelines" }, pipelines.map(option)));
    if (state.services.has(previous)) select.value = previous;
    renderParams();
  }

  function kinds(schema) {
    const type = schema.type;
    const out = Array.isArray(type) ? [...type] : type ? [type] : [];
    for (const branch of [...(schema.anyOf || []), ...(schema.oneOf || [])]) out.push(...kinds(branch));
    return out;
  }

  const UNSET = { set: false };
  const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

  function makeField(name, schema, required) {
    const id = "param-" + name;
    const types = kinds(schema);
    const hasDefault = Object.prototype.hasOwnProperty.call(schema, "default");
    const notes = [];
    let input;
    let read;
    if (Array.isArray(schema.enum)) {
      input = el("select", { id, name });
      if (!hasDefault) input.append(el("option", { value: "" }, required ? "(choose)" : "(not set)"));
      schema.enum.forEach((value, i) => input.append(el("option", { value: String(i) }, String(value))));
      const index = hasDefault ? schema.enum.findIndex((v) => same(v, schema.default)) : -1;
      input.value = index >= 0 ? String(index) : "";
      read = () => (input.value === "" ? UNSET : { set: true, value: schema.enum[Number(input.value)] });
    } else if (types.length && types.every((t) => t === "boolean")) {
      input = el("input", { id, name, type: "checkbox", checked: schema.default === true });
      read = () => ({ set: true, value: input.checked });
    } else if (types.length && types.every((t) => t === "integer" || t === "number")) {
      const integer = types.every((t) => t === "integer");
      input = el("input", { id, name, type: "number", step: integer ? "1" : "any", min: schema.minimum,
        max: schema.maximum, value: hasDefault ? String(schema.default) : "" });
      const low = schema.minimum !== undefined ? `from ${schema.minimum}`
        : schema.exclusiveMinimum !== undefined ? `more than ${schema.exclusiveMinimum}` : null;
      const high = schema.maximum === undefined ? null
        : `${schema.minimum !== undefined ? "to" : "up to"} ${schema.maximum}`;
      if (low || high) notes.push([low, high].filter(Boolean).join(" "));
      read = () => (input.value === "" ? UNSET : { set: true, value: Number(input.value) });
    } else if (types.length && types.every((t) => t === "string")) {
      input = el("input", { id, name, type: "text", spellcheck: "false",
        value: hasDefault ? String(schema.default) : "" });
      read = () => (input.value === "" ? UNSET : { set: true, value: input.value });
    } else if (types.length === 1 && types[0] === "array" && schema.items && !kinds(schema.items).includes("object")) {
      const numbers = kinds(schema.items).some((t) => t === "number" || t === "integer");
      input = el("input", { id, name, type: "text", spellcheck: "false", placeholder: "a, b, c (comma-separated)",
        value: hasDefault ? schema.default.join(", ") : "" });
      read = () => {
        if (input.value.trim() === "") return UNSET;
        const items = input.value.split(",").map((s) => s.trim());
        return { set: true, value: items.map((s) => (numbers && s !== "" && !isNaN(Number(s)) ? Number(s) : s)) };
      };
    } else {
      // Objects (a pipeline's step overrides) and anything else: JSON text.
      input = el("textarea", { id, name, rows: "2", spellcheck: "false",
        placeholder: types.includes("object") ? '{"name": value}' : "JSON",
        value: hasDefault ? JSON.stringify(schema.default) : "" });
      notes.push("JSON");
      read = () => {
        if (input.value.trim() === "") return UNSET;
        try {
          return { set: true, value: JSON.parse(input.value) };
        } catch (e) {
          throw new Error(`${name}: not valid JSON (${e.message})`);
        }
      };
    }
    const readChanged = () => {
      const got = read();
      return got.set && hasDefault && same(got.value, schema.default) ? UNSET : got;
    };
    const help = [schema.description, notes.length ? `(${notes.join("; ")})` : null].filter(Boolean).join(" ");
    const label = el("label", { for: id }, name, required ? " *" : null);
    const node = input.type === "checkbox"
      ? el("div", { class: "field check" }, input, label, help ? el("p", { class: "help" }, help) : null)
      : el("div", { class: "field" }, label, input, help ? el("p", { class: "help" }, help) : null);
    return { name, node, read: readChanged };
  }

  function renderParams() {
    const service = state.services.get($("service").value);
    $("service-description").textContent = service ? service.description : "";
    const box = $("param-fields");
    box.replaceChildren();
    state.fields = [];
    if (!service) return;
    const schema = service.parameters || {};
    const required = new Set(schema.required || []);
    for (const [name, property] of Object.entries(schema.properties || {})) {
      const field = makeField(name, property, required.has(name));
      state.fields.push(field);
      box.append(field.node);
    }
    if (!state.fields.length) box.append(el("p", { class: "help" }, "This service takes no parameters."));
    if (service.kind === "pipeline") {
      box.prepend(el("p", { class: "help" }, "Each step's parameters override the pipeline's, as a JSON object."));
    }
  }

  async function submit(event) {
    event.preventDefault();
    const message = $("submit-message");
    const service = $("service").value;
    const params = {};
    try {
      for (const field of state.fields) {
        const got = field.read();
        if (got.set) params[field.name] = got.value;
      }
    } catch (e) {
      say(message, e.message, "error");
      return;
    }
    const button = $("submit-button");
    button.disabled = true;
    say(message, "Submitting…");
    try {
      const data = await api(`${encodeURIComponent(service)}/process`, {
        method: "POST", body: { doc_url: $("doc-url").value.trim(), params } });
      say(message, `Submitted job ${data.uuid}.`, "ok");
      api(`jobs/${encodeURIComponent(data.uuid)}`).then((job) => { addJob(job, "top"); pumpStreams(); },
        () => loadJobs(true));
    } catch (e) {
      say(message, e.message, "error");
    } finally {
      button.disabled = false;
    }
  }

  // -- the jobs list -------------------------------------------------------------------------------
  function addJob(job, where) {
    let entry = state.jobs.get(job.uuid);
    if (entry) {
      // The list's record can lag behind what the job's stream showed: never step back.
      if (!entry.stream && !(FINISHED.has(entry.status) && !FINISHED.has(job.status))) {
        update(entry, FINISHED.has(job.status) ? job : { ...job, progress: Math.max(job.progress, entry.progress) });
      }
      return entry;
    }
    const parts = {
      status: el("span", { class: "status" }),
      bar: el("progress", { max: "100", value: "0" }),
      pct: el("span", { class: "pct" }),
      cancel: el("button", { type: "button", class: "cancel" }, "Cancel"),
    };
    const row = el("tr", { "data-uuid": job.uuid, tabindex: "0" },
      el("td", {}, when(job.created_at)),
      el("td", {}, job.service, job.pipeline ? el("span", { class: "help" }, ` step ${job.step}`) : null),
      el("td", {}, parts.status),
      el("td", { class: "progress" }, parts.bar, parts.pct), el("td", { class: "uuid", title: job.uuid },
        job.uuid.slice(0, 8)), el("td", {}, parts.cancel));
    entry = { job, status: null, progress: 0, row, parts, stream: null, lastEventId: "", noStream: false };
    state.jobs.set(job.uuid, entry);
    row.addEventListener("click", () => showJob(job.uuid));
    row.addEventListener("keydown", (e) => { if (e.key === "Enter") showJob(job.uuid); });
    parts.cancel.addEventListener("click", (e) => { e.stopPropagation(); cancelJob(entry); });
    const rows = $("job-rows");
    if (where === "top") rows.prepend(row); else rows.append(row);
    $("no-jobs").hidden = true;
    update(entry, job);
    return entry;
  }

  // Show a status body (or a job record) in the job's row, and in the detail panel when it is open.
  function update(entry, body, fromDetail) {
    const was = entry.status;
    entry.status = body.status;
    entry.progress = Math.max(0, Math.min(100, Number(body.progress) || 0));
    const { parts, row } = entry;
    parts.status.textContent = entry.status;
    parts.status.className = "status s-" + entry.status.toLowerCase();
    parts.bar.value = entry.progress;
    parts.pct.textContent = `${entry.progress} %`;
    parts.cancel.hidden = FINISHED.has(entry.status);
    row.dataset.status = entry.status;
    const error = body.result && FINISHED.has(entry.status) && entry.status !== "SUCCESS" ? body.result.message : null;
    if (error) row.title = String(error); else row.removeAttribute("title");
    if (state.selected === entry.job.uuid && !fromDetail) {
      const status = $("detail-status");
      if (FINISHED.has(entry.status) && !FINISHED.has(was)) showJob(entry.job.uuid, true);   // its result
      else if (status) {
        status.textContent = `${entry.status} ${entry.progress} %`;
        if ("result" in body) $("result").textContent = JSON.stringify(body.result, null, 2);
      }
    }
  }

  async function loadJobs(reset) {
    const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (!reset && state.cursor) query.set("cursor", state.cursor);
    try {
      const data = await api("jobs?" + query);
      if (reset) {
        // New jobs go on top (the page is newest first); known ones are updated in place.
        for (const job of [...data.jobs].reverse()) if (!state.jobs.has(job.uuid)) addJob(job, "top");
        for (const job of data.jobs) addJob(job);
        if (state.cursor === undefined) state.cursor = data.next_cursor;
      } else {
        for (const job of data.jobs) addJob(job, "bottom");
        state.cursor = data.next_cursor;
      }
      $("more").hidden = !state.cursor;
      $("no-jobs").hidden = state.jobs.size > 0;
      say($("jobs-message"), "");
    } catch (e) {
      if (state.token) say($("jobs-message"), e.message, "error");
    }
    pumpStreams();
    scheduleRefresh();
  }

  function scheduleRefresh() {
    clearTimeout(state.refreshTimer);
    if (!state.token) return;
    const waiting = [...state.jobs.values()].some((e) => !FINISHED.has(e.status) && !e.stream);
    state.refreshTimer = setTimeout(() => loadJobs(true), waiting ? REFRESH_BUSY_MS : REFRESH_IDLE_MS);
  }

  async function cancelJob(entry) {
    entry.parts.cancel.disabled = true;
    try {
      update(entry, await api(`jobs/${encodeURIComponent(entry.job.uuid)}`, { method: "DELETE" }));
      say($("jobs-message"), "");
    } catch (e) {
      say($("jobs-message"), e.message, "error");
    } finally {
      entry.parts.cancel.disabled = false;
      pumpStreams();
    }
  }

  // -- live progress: Server-Sent Events over fetch() ----------------------------------------------
  function pumpStreams() {
    if (!state.token) return;
    let free = MAX_STREAMS - [...state.jobs.values()].filter((e) => e.stream).length;
    for (const row of $("job-rows").rows) {      // newest first
      if (free <= 0) break;
      const entry = state.jobs.get(row.dataset.uuid);
      // A pipeline's steps are followed through the pipeline's own stream (its result lists them).
      if (entry && !entry.stream && !entry.noStream && !entry.job.pipeline && !FINISHED.has(entry.status)) {
        watch(entry);
        free -= 1;
      }
    }
  }

  async function watch(entry) {
    const controller = new AbortController();
    entry.stream = controller;
    let retryMs = 1000;
    let failures = 0;
    try {
      while (!controller.signal.aborted && !FINISHED.has(entry.status)) {
        try {
          await readEvents(entry, controller.signal, (ms) => { retryMs = ms; });
          failures = 0;
        } catch (e) {
          if (controller.signal.aborted) return;
          if (e instanceof ApiError && e.status < 500 && e.status !== 429) {   // 401, 404...: give up
            entry.noStream = true;
            return;
          }
          failures += 1;
        }
        if (!FINISHED.has(entry.status)) await sleep(Math.min(retryMs * 2 ** failures, 30000), controller.signal);
      }
    } finally {
      if (entry.stream === controller) entry.stream = null;
      if (!controller.signal.aborted) {
        pumpStreams();
        scheduleRefresh();
      }
    }
  }

  // One connection: dispatch its events until the server ends it (at most SG_SSE_MAX_S) or the job ends.
  async function readEvents(entry, signal, onRetry) {
    const headers = authHeaders({ Accept: "text/event-stream" });
    if (entry.lastEventId) headers["Last-Event-ID"] = entry.lastEventId;
    const response = await fetch(`${API}jobs/${encodeURIComponent(entry.job.uuid)}/events`,
      { headers, signal, cache: "no-store" });
    if (!response.ok) throw await failed(response);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let event = { type: "", data: [], id: null };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      const lines = buffer.split("\n");
      buffer = lines.pop();                     // an unfinished line waits for the next chunk
      for (const raw of lines) {
        const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
        if (line === "") {                        // a blank line ends an event
          if (event.id !== null) entry.lastEventId = event.id;
          if (event.data.length && (event.type === "status" || event.type === "result")) {
            update(entry, JSON.parse(event.data.join("\n")));
          }
          event = { type: "", data: [], id: null };
          continue;
        }
        if (line.startsWith(":")) continue;       // a comment (keep-alive)
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let text = colon < 0 ? "" : line.slice(colon + 1);
        if (text.startsWith(" ")) text = text.slice(1);
        if (field === "data") event.data.push(text);
        else if (field === "event") event.type = text;
        else if (field === "id" && !text.includes("\0")) event.id = text;
        else if (field === "retry" && /^\d+$/.test(text)) onRetry(Number(text));
      }
    }
  }

  // -- one job: its record, result and outputs -----------------------------------------------------
  async function showJob(uuid, quiet) {
    state.selected = uuid;
    for (const row of $("job-rows").rows) row.classList.toggle("selected", row.dataset.uuid === uuid);
    const panel = $("detail");
    panel.hidden = false;
    if (!quiet) say($("detail-message"), "Loading…");
    let job;
    try {
      job = await api(`jobs/${encodeURIComponent(uuid)}`);
    } catch (e) {
      if (state.selected === uuid) say($("detail-message"), e.message, "error");
      return;
    }
    if (state.selected !== uuid) return;
    say($("detail-message"), "");
    $("detail-title").textContent = `${job.service} job ${job.uuid}`;
    const facts = [
      ["Status", el("span", { id: "detail-status" }, `${job.status} ${job.progress} %`)],
      ["Document", job.doc_url], ["Parameters", JSON.stringify(job.params)],
      ["Created", when(job.created_at)], ["Started", when(job.started_at)], ["Finished", when(job.finished_at)],
    ];
    if (job.pipeline) facts.push(["Pipeline", `${job.pipeline} (step ${job.step})`]);
    $("detail-facts").replaceChildren(...facts.filter(([, value]) => value)
      .flatMap(([name, value]) => [el("dt", {}, name), el("dd", {}, value)]));
    const outputs = job.result && Array.isArray(job.result.outputs) ? job.result.outputs : [];
    $("outputs").replaceChildren(...(outputs.length
      ? outputs.map((o) => el("li", {}, outputLink(o)))
      : [el("li", { class: "help" }, FINISHED.has(job.status) ? "None." : "None yet.")]));
    $("result").textContent = job.result === null || job.result === undefined ? "(none yet)"
      : JSON.stringify(job.result, null, 2);
    const entry = state.jobs.get(uuid);
    if (entry && !entry.stream) update(entry, job, true);
    if (!quiet) panel.scrollIntoView({ block: "nearest" });
  }

  function closeDetail() {
    state.selected = null;
    $("detail").hidden = true;
    for (const row of $("job-rows").rows) row.classList.remove("selected");
  }

  function outputLink(output) {
    let url = null;
    try {
      url = new URL(String(output.url), location.href);
    } catch (e) { /* not a URL: shown as text */ }
    const name = String(output.name);
    const label = `${output.step ? output.step + "/" : ""}${name}`;
    const size = typeof output.size === "number" ? ` (${formatSize(output.size)})` : "";
    if (!url || (url.protocol !== "https:" && url.protocol !== "http:")) return el("span", {}, label + size);
    const link = el("a", { href: url.href, class: "output", "data-name": name }, label);
    if (url.origin === location.origin) {
      // The download route needs the token: fetch it, then save the blob through an object URL.
      link.setAttribute("download", name);
      link.addEventListener("click", (e) => { e.preventDefault(); download(url.href, name); });
    } else {
      link.setAttribute("rel", "noopener noreferrer");  // elsewhere (object storage): never send the token
      link.setAttribute("target", "_blank");
    }
    return el("span", {}, link, size);
  }

  function formatSize(bytes) {
    const units = ["B", "KB", "MB", "GB"];
    let i = 0;
    while (bytes >= 1024 && i < units.length - 1) { bytes /= 1024; i += 1; }
    return `${i ? bytes.toFixed(1) : bytes} ${units[i]}`;
  }

  async function download(href, name) {
    const message = $("detail-message");
    say(message, `Downloading ${name}…`);
    try {
      const response = await fetch(href, { headers: authHeaders() });
      if (!response.ok) throw await failed(response);
      const objectUrl = URL.createObjectURL(await response.blob());
      const save = el("a", { href: objectUrl, download: name, hidden: true });
      document.body.append(save);
      save.click();
      save.remove();
      setTimeout(() => URL.revokeObjectURL(objectUrl), 60000);
      say(message, `Saved ${name}.`, "ok");
    } catch (e) {
      say(message, e.message, "error");
    }
  }

  // -- wiring ----------------------------------------------------------------------------------------
  function init() {
    $("token-form").addEventListener("submit", (e) => { e.preventDefault(); useToken($("token-input").value); });
    $("client-form").addEventListener("submit", clientLogin);
    $("sign-out").addEventListener("click", () => signOut());
    $("service").addEventListener("change", renderParams);
    $("submit-form").addEventListener("submit", submit);
    $("refresh").addEventListener("click", () => loadJobs(true));
    $("more").addEventListener("click", () => loadJobs(false));
    $("close-detail").addEventListener("click", closeDetail);
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) useToken(saved);
  }

  init();
})();
