// switchyard's run board. Plain TypeScript compiled by tsc (board/dist/app.js, committed
// and embedded in the binary). No framework, no runtime dependency, nothing fetched from
// elsewhere: the page talks to the listener that served it.
//
// Live data comes from one Server-Sent Events stream read with fetch (so the token goes
// as a bearer header, never in a URL). The token lives in this script's memory only.

export {};

type Status = "IN_PROGRESS" | "SUCCESS" | "FAILURE";

interface Summary {
  id: string;
  status: Status;
  statusLabel?: string;
  action?: string;
  backend?: string;
  externalRunId?: string;
  createdAt: string;
  updatedAt: string;
  endedAt?: string;
  summary?: string;
  lastLog?: string;
}

interface Listing {
  runs: Summary[];
  counts: Record<string, number>;
  matched: number;
  total: number;
}

interface LogLine {
  seq: number;
  at: string;
  level?: string;
  message: string;
}

interface Step {
  seq: number;
  at: string;
  kind: "status" | "response" | "log";
  status?: Status;
  statusLabel?: string;
  summary?: string;
  link?: string[];
  externalRunId?: string;
  attempt?: number;
  durationMs?: number;
  responseBytes?: number;
}

interface Run {
  id: string;
  status: Status;
  statusLabel?: string;
  link: string[];
  summary?: string;
  externalRunId?: string;
  response?: unknown;
  backend?: string;
  action?: string;
  logs: LogLine[];
  logsDropped: number;
  timeline: Step[];
  createdAt: string;
  updatedAt: string;
  endedAt?: string;
}

interface Letter {
  partition: number;
  offset: number;
  runId?: string;
  class: string;
  error: string;
  failedAt: string;
  attempts?: number;
  source?: string;
  event: unknown;
  eventTruncated: boolean;
}

interface DlqListing {
  records: Letter[];
  classes: Record<string, number>;
  held: number;
  forgotten: number;
}

interface Health {
  scope: string;
  eventsPerSecond: number;
  consumerLag: number;
  assignedPartitions: number;
  inFlight: number;
  pausedBackends: string[];
  openBreakers: Record<string, number>;
  dlqBlocked: number;
  refusals: number;
}

interface BoardInfo {
  auth: "none" | "token";
  note: string;
  replay: boolean;
  maxList: number;
}

const STATUSES: Status[] = ["IN_PROGRESS", "SUCCESS", "FAILURE"];
const ROW_HEIGHT = 34;
const LARGE_RESPONSE = 1024;

// ---- state -------------------------------------------------------------------------

let token: string | null = null;
let info: BoardInfo | null = null;
let maxList = 10000;

interface Filter {
  status: string;
  action: string;
  backend: string;
  since: string; // RFC 3339 or ""
  until: string;
  q: string;
}

const filter: Filter = { status: "", action: "", backend: "", since: "", until: "", q: "" };

// The runs held, newest first, as the current filter selects them.
let runs: Summary[] = [];
const byId = new Map<string, Summary>();
let counts: Record<string, number> = {};
let matched = 0;
const actionsSeen = new Set<string>();
const backendsSeen = new Set<string>();
let lastHealth: Health | null = null;

// What the current page wants to hear about.
let onRunsChanged: ((changed: Summary[]) => void) | null = null;

// ---- small helpers -----------------------------------------------------------------

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  ...children: (Node | string | null)[]
): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null) continue;
    e.append(typeof c === "string" ? document.createTextNode(c) : c);
  }
  return e;
}

function present(...nodes: (Node | string | null)[]): (Node | string)[] {
  return nodes.filter((n): n is Node | string => n !== null);
}

function byIdEl<T extends HTMLElement>(id: string): T {
  const e = document.getElementById(id);
  if (!e) throw new Error(`missing #${id}`);
  return e as T;
}

function headers(): HeadersInit {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

class HttpError extends Error {
  constructor(public status: number, message: string) {
    super(message);
  }
}

async function api<T>(path: string, init: RequestInit = {}): Promise<T> {
  const resp = await fetch(path, {
    ...init,
    headers: { ...headers(), ...(init.headers || {}) },
    cache: "no-store",
  });
  const text = await resp.text();
  let body: unknown = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = text;
  }
  if (!resp.ok) {
    const msg =
      body && typeof body === "object" && "message" in body
        ? String((body as { message: unknown }).message)
        : `${resp.status} ${resp.statusText}`;
    if (resp.status === 401) askForToken(msg);
    throw new HttpError(resp.status, msg);
  }
  return body as T;
}

function ms(iso: string | undefined): number {
  return iso ? Date.parse(iso) : NaN;
}

function human(msValue: number): string {
  if (!isFinite(msValue) || msValue < 0) return "";
  if (msValue < 1000) return `${Math.round(msValue)} ms`;
  const s = msValue / 1000;
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  const m = s / 60;
  if (m < 60) return `${Math.floor(m)} min ${Math.round(s % 60)} s`;
  const h = m / 60;
  if (h < 48) return `${Math.floor(h)} h ${Math.round(m % 60)} min`;
  return `${Math.floor(h / 24)} d`;
}

function age(iso: string): string {
  const d = Date.now() - ms(iso);
  return d < 1000 ? "just now" : `${human(d)} ago`;
}

function duration(r: { createdAt: string; endedAt?: string }): string {
  const end = r.endedAt ? ms(r.endedAt) : Date.now();
  return human(end - ms(r.createdAt)) + (r.endedAt ? "" : " …");
}

function safeUrl(u: string): string | null {
  try {
    const url = new URL(u);
    return url.protocol === "https:" || url.protocol === "http:" ? url.href : null;
  } catch {
    return null;
  }
}

function statusPill(s: Status): HTMLElement {
  return el("span", { class: `pill s-${s}`, "data-status": s }, s.replace("_", " "));
}

function showError(where: HTMLElement, e: unknown): void {
  const msg = e instanceof Error ? e.message : String(e);
  where.replaceChildren(el("p", { class: "error" }, msg));
}

// ---- access --------------------------------------------------------------------------

function askForToken(message?: string): void {
  token = null;
  byIdEl("main").replaceChildren();
  const form = byIdEl<HTMLFormElement>("login");
  form.hidden = false;
  const err = byIdEl("login-error");
  err.hidden = !message;
  err.textContent = message || "";
  byIdEl<HTMLInputElement>("token").focus();
}

async function start(): Promise<void> {
  const form = byIdEl<HTMLFormElement>("login");
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const input = byIdEl<HTMLInputElement>("token");
    token = input.value.trim();
    input.value = "";
    form.hidden = true;
    void openBoard();
  });
  window.addEventListener("hashchange", () => route());
  try {
    info = await api<BoardInfo>("/v1/board");
  } catch (e) {
    showError(byIdEl("main"), e);
    return;
  }
  maxList = info.maxList;
  const notice = byIdEl("notice");
  if (info.auth === "none") {
    notice.hidden = false;
    notice.textContent = info.note;
    void openBoard();
  } else {
    askForToken();
  }
}

// Called once a token is in hand (or none is needed): check it, then stream and route.
async function openBoard(): Promise<void> {
  try {
    await reload();
  } catch (e) {
    if (!(e instanceof HttpError && e.status === 401)) showError(byIdEl("main"), e);
    return;
  }
  void stream();
  route();
}

// ---- the event stream ----------------------------------------------------------------

let streamGeneration = 0;

async function stream(): Promise<void> {
  const generation = ++streamGeneration;
  const retry = () => {
    if (generation !== streamGeneration) return;
    delete document.body.dataset.live;
    setTimeout(() => {
      void reload()
        .catch(() => undefined)
        .then(() => stream());
    }, 1000);
  };
  let resp: Response;
  try {
    resp = await fetch("/v1/events", { headers: headers(), cache: "no-store" });
  } catch {
    retry();
    return;
  }
  if (resp.status === 401) {
    askForToken("the token was refused");
    return;
  }
  if (!resp.ok || !resp.body) {
    retry();
    return;
  }
  // Connected: what changed before the stream began is in a fresh listing.
  void reload()
    .catch(() => undefined)
    .then(() => {
      if (generation === streamGeneration) document.body.dataset.live = "1";
    });
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      let cut: number;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        let event = "message";
        const data: string[] = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) event = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
        }
        if (data.length) handle(event, data.join("\n"));
      }
    }
  } catch {
    // the connection dropped: reconnect below
  }
  retry();
}

function handle(event: string, data: string): void {
  const value = JSON.parse(data);
  if (event === "runs") applyChanges(value as Summary[]);
  else if (event === "health") renderHealth(value as Health);
  else if (event === "reset") void reload().then(() => onRunsChanged && onRunsChanged([]));
}

// ---- the runs held -------------------------------------------------------------------

function query(): string {
  // The filter's fields are the query's parameters.
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(filter)) if (v) p.set(k, v);
  p.set("limit", String(maxList));
  return p.toString();
}

// Changes that arrive while a listing is on its way are applied again on top of it, so
// a listing computed before a change cannot hide it.
let arrivedDuringReload: Summary[][] | null = null;

async function reload(): Promise<void> {
  const arrived: Summary[][] = [];
  arrivedDuringReload = arrived;
  let listing: Listing;
  try {
    listing = await api<Listing>(`/v1/runs?${query()}`);
  } finally {
    if (arrivedDuringReload === arrived) arrivedDuringReload = null;
  }
  runs = listing.runs;
  byId.clear();
  for (const r of runs) {
    byId.set(r.id, r);
    note(r);
  }
  counts = listing.counts;
  matched = listing.matched;
  for (const batch of arrived) applyChanges(batch, false);
  if (onRunsChanged) onRunsChanged([]);
}

function note(r: Summary): void {
  if (r.action) actionsSeen.add(r.action);
  if (r.backend) backendsSeen.add(r.backend);
}

function matches(r: Summary): boolean {
  const has = (want: string, v?: string) => !want || want.split(",").includes(v || "");
  const q = filter.q.toLowerCase();
  return (
    has(filter.status, r.status) &&
    has(filter.action, r.action) &&
    has(filter.backend, r.backend) &&
    (!filter.since || r.createdAt >= filter.since) &&
    (!filter.until || r.createdAt <= filter.until) &&
    (!q ||
      r.id.toLowerCase().includes(q) ||
      (r.externalRunId || "").toLowerCase().includes(q))
  );
}

function bump(status: Status, by: number): void {
  counts[status] = Math.max(0, (counts[status] || 0) + by);
}

function applyChanges(changed: Summary[], live = true): void {
  if (live && arrivedDuringReload) arrivedDuringReload.push(changed);
  const fresh: Summary[] = [];
  const gone = new Set<string>();
  for (const r of changed) {
    note(r);
    const held = byId.get(r.id);
    const fits = matches(r);
    if (held && held.updatedAt === r.updatedAt && held.status === r.status) {
      continue; // already folded (a change re-applied after a listing)
    }
    if (held) {
      if (matches(held)) {
        bump(held.status, -1);
        matched--;
      }
      if (fits) {
        bump(r.status, 1);
        matched++;
        // In place: the list holds this very object.
        for (const k of Object.keys(held) as (keyof Summary)[]) delete held[k];
        Object.assign(held, r);
      } else {
        gone.add(r.id);
        byId.delete(r.id);
      }
    } else if (fits) {
      bump(r.status, 1);
      matched++;
      fresh.push(r);
      byId.set(r.id, r);
    }
  }
  if (gone.size) runs = runs.filter((r) => !gone.has(r.id));
  if (fresh.length) {
    fresh.sort((a, b) => (a.createdAt < b.createdAt ? 1 : -1));
    runs = fresh.concat(runs);
    while (runs.length > maxList) {
      const old = runs.pop();
      if (old) byId.delete(old.id);
    }
  }
  if (onRunsChanged) onRunsChanged(changed);
}

// ---- the health strip ----------------------------------------------------------------

function renderHealth(h: Health): void {
  lastHealth = h;
  const breakers = Object.entries(h.openBreakers);
  const fig = (label: string, value: string, bad: boolean, title: string) =>
    el(
      "span",
      { class: bad ? "fig bad" : "fig", title, "data-fig": label },
      el("b", {}, value),
      ` ${label}`,
    );
  byIdEl("health").replaceChildren(
    el("span", { class: "scope", title: "every figure is this instance's, not the group's" }, "this instance:"),
    fig("events/s", h.eventsPerSecond.toFixed(1), false, "trigger records consumed per second"),
    fig("lag", String(h.consumerLag), h.consumerLag > 1000, `consumer lag over ${h.assignedPartitions} assigned partitions`),
    fig("in flight", String(h.inFlight), false, "runs inside a backend pool"),
    fig(
      "paused",
      h.pausedBackends.length ? h.pausedBackends.join(", ") : "0",
      h.pausedBackends.length > 0,
      "backends paused after a credential failure",
    ),
    fig(
      "breakers open",
      breakers.length ? breakers.map(([b, n]) => `${b} ${n}`).join(", ") : "0",
      breakers.length > 0,
      "destinations whose circuit breaker is open",
    ),
    fig("DLQ blocked", String(h.dlqBlocked), h.dlqBlocked > 0, "dead-letter writes failing"),
  );
}

// ---- routing -------------------------------------------------------------------------

function route(): void {
  if (!info || (info.auth === "token" && !token)) return;
  const hash = location.hash || "#/";
  onRunsChanged = null;
  for (const a of Array.from(document.querySelectorAll<HTMLAnchorElement>("nav a"))) {
    const page = hash.startsWith("#/dlq") ? "dlq" : "runs";
    a.classList.toggle("here", a.dataset.nav === page);
  }
  const main = byIdEl("main");
  if (hash.startsWith("#/runs/")) {
    void runPage(main, decodeURIComponent(hash.slice("#/runs/".length)));
  } else if (hash.startsWith("#/dlq")) {
    void dlqPage(main);
  } else {
    listPage(main);
  }
  if (lastHealth) renderHealth(lastHealth);
}

// ---- the runs list -------------------------------------------------------------------

function options(select: HTMLSelectElement, values: Iterable<string>, all: string): void {
  const current = select.value;
  const sorted = Array.from(new Set(values)).sort();
  select.replaceChildren(
    el("option", { value: "" }, all),
    ...sorted.map((v) => el("option", { value: v }, v)),
  );
  select.value = sorted.includes(current) ? current : "";
}

function toRfc3339(local: string): string {
  if (!local) return "";
  const d = new Date(local);
  return isNaN(d.getTime()) ? "" : d.toISOString();
}

function listPage(main: HTMLElement): void {
  const status = el("select", { id: "f-status", "aria-label": "status" });
  status.append(el("option", { value: "" }, "every status"), ...STATUSES.map((s) => el("option", { value: s }, s)));
  status.value = filter.status;
  const action = el("select", { id: "f-action", "aria-label": "action" });
  const backend = el("select", { id: "f-backend", "aria-label": "backend" });
  const since = el("input", { id: "f-since", type: "datetime-local", "aria-label": "since", step: "1" });
  const until = el("input", { id: "f-until", type: "datetime-local", "aria-label": "until", step: "1" });
  const search = el("input", {
    id: "f-q",
    type: "search",
    placeholder: "run id or external run id",
    "aria-label": "search",
  });
  search.value = filter.q;
  const countsEl = el("div", { class: "counts", id: "counts" });
  const viewport = el("div", { class: "viewport", id: "runs" });
  const spacer = el("div", { class: "spacer" });
  const rows = el("div", { class: "rows" });
  viewport.append(spacer, rows);
  const empty = el("p", { class: "empty", id: "empty" }, "No runs match.");
  main.replaceChildren(
    el("div", { class: "filters" }, status, action, backend, el("label", {}, "from ", since), el("label", {}, "to ", until), search),
    countsEl,
    el(
      "div",
      { class: "row head" },
      el("span", { class: "c-status" }, "status"),
      el("span", { class: "c-action" }, "action"),
      el("span", { class: "c-backend" }, "backend"),
      el("span", { class: "c-id" }, "run id"),
      el("span", { class: "c-age" }, "age"),
      el("span", { class: "c-dur" }, "duration"),
      el("span", { class: "c-log" }, "last log / summary"),
    ),
    viewport,
    empty,
  );

  const refreshOptions = () => {
    options(action, actionsSeen, "every action");
    options(backend, backendsSeen, "every backend");
    action.value = filter.action;
    backend.value = filter.backend;
  };
  refreshOptions();

  const renderCounts = () => {
    countsEl.replaceChildren(
      el("span", { "data-count": "ALL" }, `${matched} runs`),
      ...STATUSES.map((s) => el("span", { class: `count s-${s}`, "data-count": s }, `${s.replace("_", " ")} ${counts[s] || 0}`)),
    );
  };

  // Only the rows in view exist in the document.
  let drawn = "";
  const draw = (force: boolean) => {
    const top = viewport.scrollTop;
    const height = viewport.clientHeight || 600;
    const first = Math.max(0, Math.floor(top / ROW_HEIGHT) - 5);
    const last = Math.min(runs.length, Math.ceil((top + height) / ROW_HEIGHT) + 5);
    spacer.style.height = `${runs.length * ROW_HEIGHT}px`;
    empty.hidden = runs.length > 0;
    const key = `${first}:${last}:${runs.length}`;
    if (!force && key === drawn) return;
    drawn = key;
    const out: HTMLElement[] = [];
    for (let i = first; i < last; i++) {
      const r = runs[i];
      const row = el(
        "a",
        { class: "row", href: `#/runs/${encodeURIComponent(r.id)}`, "data-run": r.id },
        el("span", { class: "c-status" }, statusPill(r.status)),
        el("span", { class: "c-action" }, r.action || ""),
        el("span", { class: "c-backend" }, r.backend || ""),
        el("span", { class: "c-id mono" }, r.id),
        el("span", { class: "c-age" }, age(r.createdAt)),
        el("span", { class: "c-dur" }, duration(r)),
        el("span", { class: "c-log" }, r.lastLog || r.summary || r.statusLabel || ""),
      );
      row.style.top = `${i * ROW_HEIGHT}px`;
      out.push(row);
    }
    rows.replaceChildren(...out);
  };

  let frame = 0;
  const schedule = (force: boolean) => {
    if (frame) return;
    frame = requestAnimationFrame(() => {
      frame = 0;
      draw(force);
    });
  };
  viewport.addEventListener("scroll", () => schedule(false), { passive: true });

  let debounce = 0;
  const refilter = () => {
    filter.status = status.value;
    filter.action = action.value;
    filter.backend = backend.value;
    filter.since = toRfc3339(since.value);
    filter.until = toRfc3339(until.value);
    filter.q = search.value.trim();
    clearTimeout(debounce);
    debounce = window.setTimeout(() => {
      reload().catch((e) => showError(countsEl, e));
    }, 150);
  };
  for (const input of [status, action, backend, since, until]) input.addEventListener("change", refilter);
  search.addEventListener("input", refilter);

  onRunsChanged = () => {
    refreshOptions();
    renderCounts();
    schedule(true);
  };
  renderCounts();
  draw(true);
  // Ages and running durations move on their own.
  const tick = window.setInterval(() => {
    if (!document.body.contains(viewport)) clearInterval(tick);
    else schedule(true);
  }, 1000);
}

// ---- a run's page --------------------------------------------------------------------

function copyButton(text: string): HTMLElement {
  const b = el("button", { type: "button", class: "copy", "data-copy": text, title: "copy" }, "copy");
  b.addEventListener("click", () => {
    const done = () => {
      b.textContent = "copied";
      setTimeout(() => (b.textContent = "copy"), 1500);
    };
    const fallback = () => {
      const area = el("textarea", {}, text);
      document.body.append(area);
      area.select();
      try {
        document.execCommand("copy");
      } finally {
        area.remove();
      }
      done();
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, fallback);
    } else {
      fallback();
    }
  });
  return b;
}

function pretty(v: unknown): string {
  return typeof v === "string" ? v : JSON.stringify(v, null, 2);
}

function letterView(l: Letter, open: boolean): HTMLElement {
  const event = pretty(l.event);
  return el(
    "div",
    { class: "letter", "data-letter": `${l.partition}@${l.offset}` },
    el(
      "div",
      { class: "meta" },
      el("span", { class: "class" }, l.class),
      el("span", { class: "when" }, l.failedAt),
      l.attempts !== undefined ? el("span", {}, `${l.attempts} attempts`) : null,
      l.source ? el("span", { class: "mono" }, l.source) : null,
    ),
    el("p", { class: "error-text" }, l.error),
    el(
      "details",
      open ? { open: "" } : {},
      el("summary", {}, `original event${l.eventTruncated ? " (cut at 64 KiB)" : ""}, secrets redacted`),
      el("pre", { class: "event" }, event),
    ),
  );
}

async function runPage(main: HTMLElement, id: string): Promise<void> {
  main.replaceChildren(el("p", { class: "loading" }, `run ${id}…`));
  let pending = 0;
  const render = async () => {
    let run: Run;
    let letters: DlqListing;
    try {
      [run, letters] = await Promise.all([
        api<{ run: Run }>(`/v1/actions/runs/${encodeURIComponent(id)}`).then((b) => b.run),
        api<DlqListing>(`/v1/dlq?runId=${encodeURIComponent(id)}`),
      ]);
    } catch (e) {
      showError(main, e);
      return;
    }
    if (location.hash !== `#/runs/${encodeURIComponent(id)}` && location.hash !== `#/runs/${id}`) return;
    main.replaceChildren(runView(run, letters.records));
  };
  onRunsChanged = (changed) => {
    if (!changed.some((r) => r.id === id)) return;
    clearTimeout(pending);
    pending = window.setTimeout(() => void render(), 100);
  };
  await render();
}

function runView(run: Run, letters: Letter[]): HTMLElement {
  const start = ms(run.createdAt);
  const links = run.link
    .map((u) => safeUrl(u))
    .filter((u): u is string => u !== null)
    .map((u) => el("a", { href: u, target: "_blank", rel: "noopener noreferrer", class: "ext" }, u));
  const attempts = run.timeline.filter((s) => s.attempt !== undefined);
  const entries: { seq: number; node: HTMLElement }[] = [];
  for (const s of run.timeline) {
    const parts: (Node | string | null)[] = [];
    if (s.kind !== "response") {
      if (s.status) parts.push(statusPill(s.status));
      if (s.statusLabel) parts.push(el("span", { class: "label" }, s.statusLabel));
      if (s.summary) parts.push(el("span", { class: "summary" }, s.summary));
      if (s.attempt !== undefined) parts.push(el("span", { class: "attempt" }, `attempt ${s.attempt}`));
      if (s.durationMs !== undefined) parts.push(el("span", { class: "took" }, `took ${human(s.durationMs)}`));
      if (s.externalRunId) parts.push(el("span", { class: "mono" }, `external ${s.externalRunId}`));
      for (const u of s.link || []) {
        const safe = safeUrl(u);
        if (safe) parts.push(el("a", { href: safe, target: "_blank", rel: "noopener noreferrer" }, safe));
      }
    }
    // A response update, or a terminal update that carries the response.
    if (s.kind === "response" || s.responseBytes !== undefined) {
      const body = pretty(run.response);
      const size = s.responseBytes || body.length;
      parts.push(
        el(
          "details",
          size > LARGE_RESPONSE ? {} : { open: "" },
          el("summary", {}, `response (${size} bytes)`),
          el("pre", { class: "response" }, body),
        ),
      );
    }
    entries.push({ seq: s.seq, node: step(s.seq, s.at, start, s.kind, parts) });
  }
  for (const l of run.logs) {
    entries.push({
      seq: l.seq,
      node: step(l.seq, l.at, start, "log", [
        l.level ? el("span", { class: `level l-${l.level}` }, l.level) : null,
        el("span", { class: "message" }, l.message),
      ]),
    });
  }
  entries.sort((a, b) => a.seq - b.seq);
  return el(
    "article",
    { class: "run", "data-run": run.id },
    el("p", {}, el("a", { href: "#/" }, "← runs")),
    el(
      "h1",
      {},
      statusPill(run.status),
      " ",
      el("span", { class: "mono", id: "run-id" }, run.id),
      " ",
      copyButton(run.id),
    ),
    el(
      "dl",
      { class: "facts" },
      el("dt", {}, "action"),
      el("dd", {}, run.action || "—"),
      el("dt", {}, "backend"),
      el("dd", {}, run.backend || "—"),
      el("dt", {}, "started"),
      el("dd", {}, `${run.createdAt} (${age(run.createdAt)})`),
      el("dt", {}, "duration"),
      el("dd", {}, duration(run)),
      el("dt", {}, "attempts"),
      el(
        "dd",
        {},
        attempts.length
          ? attempts.map((s) => `#${s.attempt}${s.durationMs !== undefined ? ` ${human(s.durationMs)}` : ""}`).join(", ")
          : "—",
      ),
      el("dt", {}, "external run"),
      el("dd", { id: "external" }, ...(links.length ? links : [run.externalRunId || "—"])),
      run.statusLabel ? el("dt", {}, "label") : null,
      run.statusLabel ? el("dd", {}, run.statusLabel) : null,
      run.summary ? el("dt", {}, "summary") : null,
      run.summary ? el("dd", {}, run.summary) : null,
    ),
    el("h2", {}, "Timeline"),
    el("ol", { class: "timeline", id: "timeline" }, ...entries.map((e) => e.node)),
    run.logsDropped ? el("p", { class: "note" }, `${run.logsDropped} later log lines were not kept (api.max_logs)`) : null,
    letters.length ? el("h2", {}, "Dead letter") : null,
    ...letters.map((l) => letterView(l, true)),
  );
}

function step(seq: number, at: string, start: number, kind: string, parts: (Node | string | null)[]): HTMLElement {
  const offset = ms(at) - start;
  return el(
    "li",
    { class: `step k-${kind}`, "data-seq": String(seq), "data-kind": kind },
    el("span", { class: "seq" }, `#${seq}`),
    el("time", { datetime: at, title: at }, isFinite(offset) ? `+${human(offset) || "0 ms"}` : at),
    el("span", { class: "kind" }, kind),
    el("span", { class: "body" }, ...parts),
  );
}

// ---- the DLQ page --------------------------------------------------------------------

async function dlqPage(main: HTMLElement): Promise<void> {
  const klass = el("select", { id: "d-class", "aria-label": "class" });
  const since = el("input", { id: "d-since", type: "datetime-local", "aria-label": "failed since", step: "1" });
  const until = el("input", { id: "d-until", type: "datetime-local", "aria-label": "failed until", step: "1" });
  const summary = el("div", { class: "counts", id: "dlq-counts" });
  const list = el("div", { class: "letters", id: "letters" });
  const preview = el("div", { class: "preview", id: "preview" });
  const previewButton = el("button", { type: "button", id: "replay-preview" }, "Preview replay");
  const canReplay = info?.replay === true;
  if (!canReplay) {
    previewButton.disabled = true;
    previewButton.title = "replay needs api.tokens with the write scope";
  }
  main.replaceChildren(
    ...present(
    el("h1", {}, "Dead letters"),
    el(
      "div",
      { class: "filters" },
      klass,
      el("label", {}, "failed from ", since),
      el("label", {}, "to ", until),
      previewButton,
    ),
    canReplay
      ? null
      : el("p", { class: "note" }, "Replay is off: no api.tokens are configured (it needs a token with the write scope)."),
    preview,
    summary,
    list,
    ),
  );
  const selection = () => ({
    classes: klass.value ? [klass.value] : [],
    since: toRfc3339(since.value) || undefined,
    until: toRfc3339(until.value) || undefined,
  });
  const load = async () => {
    const s = selection();
    const p = new URLSearchParams();
    if (s.classes.length) p.set("class", s.classes.join(","));
    if (s.since) p.set("since", s.since);
    if (s.until) p.set("until", s.until);
    let listing: DlqListing;
    try {
      listing = await api<DlqListing>(`/v1/dlq?${p}`);
    } catch (e) {
      showError(list, e);
      return;
    }
    const current = klass.value;
    klass.replaceChildren(
      el("option", { value: "" }, "every class"),
      ...Object.keys(listing.classes).map((c) => el("option", { value: c }, `${c} (${listing.classes[c]})`)),
    );
    klass.value = current;
    summary.replaceChildren(
      ...present(
      el("span", { "data-count": "DLQ" }, `${listing.records.length} records`),
      el("span", {}, `${listing.held} held`),
      listing.forgotten ? el("span", {}, `${listing.forgotten} older not shown (switchyard dlq replay --dry-run lists them)`) : null,
      ),
    );
    list.replaceChildren(
      ...listing.records.map((l) => {
        const v = letterView(l, false);
        if (l.runId) {
          v.prepend(el("a", { href: `#/runs/${encodeURIComponent(l.runId)}`, class: "mono run-link" }, l.runId));
        }
        return v;
      }),
    );
    if (!listing.records.length) list.append(el("p", { class: "empty" }, "No dead letters match."));
  };
  const replay = async (dryRun: boolean) => {
    return api<{ count: number; destinations: string[]; records?: Letter[] }>("/v1/dlq/replay", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ ...selection(), dryRun }),
    });
  };
  previewButton.addEventListener("click", async () => {
    preview.replaceChildren(el("p", { class: "loading" }, "reading the whole DLQ…"));
    try {
      const dry = await replay(true);
      const confirm = el("button", { type: "button", id: "replay-confirm", class: "danger" }, `Replay ${dry.count} records`);
      confirm.disabled = dry.count === 0;
      const cancel = el("button", { type: "button" }, "Cancel");
      cancel.addEventListener("click", () => preview.replaceChildren());
      confirm.addEventListener("click", async () => {
        confirm.disabled = true;
        try {
          const done = await replay(false);
          preview.replaceChildren(
            el("p", { class: "ok", id: "replay-done" }, `Replayed ${done.count} records to ${done.destinations.join(", ") || "—"}.`),
          );
        } catch (e) {
          showError(preview, e);
        }
      });
      preview.replaceChildren(
        el(
          "p",
          { id: "replay-dry" },
          `Dry run: ${dry.count} records would be replayed to ${dry.destinations.join(", ") || "—"}.`,
        ),
        el(
          "ul",
          {},
          ...(dry.records || []).slice(0, 50).map((l) => el("li", { class: "mono" }, `${l.partition}@${l.offset} ${l.runId || "(no run id)"} [${l.class}]`)),
        ),
        confirm,
        cancel,
      );
    } catch (e) {
      showError(preview, e);
    }
  });
  for (const input of [klass, since, until]) input.addEventListener("change", () => void load());
  await load();
}

document.addEventListener("DOMContentLoaded", () => void start());
