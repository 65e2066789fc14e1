// The trace page's waterfall: only the rows in view are in the document, so a
// trace of thousands of spans scrolls as fast as one of ten. The server renders
// the first rows; this module takes over, keeps collapsed subtrees and the
// "only errors" filter, moves with the keyboard (treegrid pattern) and loads the
// span panel from /traces/{id}/spans/{span} when a row is chosen.

const ROW = 22; // px, the same as .wf-row in app.css and the server's rows
const OVERSCAN = 12;
const F_ERROR = 1, F_CRIT = 2, F_RC = 4, F_CQ = 8;

const data = JSON.parse(document.getElementById("trace-data").textContent);
const rows = data.rows; // [span id, parent, depth, name, service, offset, duration, flags, (error, type)]
const n = rows.length;
const total = data.duration_ns || 1;
const grid = document.getElementById("wf");
const scroller = document.getElementById("wf-scroll");
const canvas = document.getElementById("wf-canvas");
const panel = document.getElementById("span-panel");
const traceId = grid.dataset.trace;

const children = new Int32Array(n);
const errorBelow = new Uint8Array(n); // the row or a descendant is an error
const byId = new Map();
for (let i = n - 1; i >= 0; i--) {
  const r = rows[i];
  byId.set(r[0], i);
  if (r[7] & F_ERROR) errorBelow[i] = 1;
  if (r[1] >= 0) {
    children[r[1]]++;
    if (errorBelow[i]) errorBelow[r[1]] = 1;
  }
}
const collapsed = new Uint8Array(n);
let onlyErrors = false;
let visible = []; // row indices shown, in order
let position = new Int32Array(n); // row -> position in visible, -1 hidden
let selected = -1;
let focusRow = -1;

const esc = (s) =>
  String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

function fmt(ns) {
  if (ns < 1e6) return `${Math.round(ns / 1e3)} µs`;
  if (ns < 1e9) return `${(ns / 1e6).toFixed(1)} ms`;
  return `${(ns / 1e9).toFixed(2)} s`;
}

function computeVisible() {
  visible = [];
  position.fill(-1);
  let skipBelow = -1; // depth under which rows are hidden by a collapsed ancestor
  for (let i = 0; i < n; i++) {
    const depth = rows[i][2];
    if (skipBelow >= 0) {
      if (depth > skipBelow) continue;
      skipBelow = -1;
    }
    if (onlyErrors && !errorBelow[i]) continue;
    position[i] = visible.length;
    visible.push(i);
    if (collapsed[i]) skipBelow = depth;
  }
  canvas.style.height = `${visible.length * ROW}px`;
  grid.setAttribute("aria-rowcount", String(visible.length + 1));
}

function rowHtml(i, pos) {
  const [, , depth, nameIndex, svc, offset, duration, flags, error = "", kind = ""] = rows[i];
  const name = data.names[nameIndex];
  const classes = ["wf-row"];
  if (flags & F_ERROR) classes.push("err");
  if (flags & F_CRIT) classes.push("crit");
  if (flags & F_RC) classes.push("root-cause");
  if (flags & F_CQ) classes.push("consequence");
  if (i === selected) classes.push("sel");
  const expanded = children[i] ? ` aria-expanded="${collapsed[i] ? "false" : "true"}"` : "";
  const tog = children[i] ? (collapsed[i] ? "▸" : "▾") : "";
  const left = (100 * offset) / total;
  const width = Math.max((100 * duration) / total, 0.2);
  const s = svc % 10;
  let tags = "";
  if (flags & F_RC) tags += '<span class="tag rc-tag">root cause</span>';
  else if (flags & F_CQ) tags += '<span class="tag cq-tag">consequence</span>';
  if (flags & F_ERROR) {
    tags += `<span class="tag err-tag" title="${esc(error)}">${esc(kind || "error")}</span>`;
  }
  return (
    `<div class="${classes.join(" ")}" role="row" aria-rowindex="${pos + 2}" aria-level="${depth + 1}"${expanded}` +
    ` aria-selected="${i === selected}" tabindex="${i === focusRow ? 0 : -1}" data-i="${i}" style="top:${pos * ROW}px">` +
    `<div class="c-name" role="gridcell" style="padding-left:${4 + Math.min(depth, 24) * 12}px">` +
    `<span class="tog" aria-hidden="true">${tog}</span><span class="dot s${s}" aria-hidden="true"></span>` +
    `<span class="nm">${esc(name)}</span>${tags} <span class="sv">${esc(data.services[svc])}</span></div>` +
    `<div class="c-bar" role="gridcell"><span class="bar s${s}" style="left:${left.toFixed(3)}%;width:${width.toFixed(3)}%"></span>` +
    `<span class="du">${fmt(duration)}</span></div></div>`
  );
}

let drawn = [-1, -1];
function render(force = false) {
  const top = scroller.scrollTop;
  const height = scroller.clientHeight || 600;
  const first = Math.max(0, Math.floor(top / ROW) - OVERSCAN);
  const last = Math.min(visible.length, Math.ceil((top + height) / ROW) + OVERSCAN);
  if (!force && first === drawn[0] && last === drawn[1]) return;
  const hadFocus = canvas.contains(document.activeElement);
  let html = "";
  for (let p = first; p < last; p++) html += rowHtml(visible[p], p);
  canvas.innerHTML = html;
  drawn = [first, last];
  if (hadFocus && focusRow >= 0) {
    const el = canvas.querySelector(`[data-i="${focusRow}"]`);
    if (el) el.focus({ preventScroll: true });
  }
}

function refresh() {
  computeVisible();
  render(true);
}

function scrollToRow(i) {
  const pos = position[i];
  if (pos < 0) return;
  const top = pos * ROW;
  if (top < scroller.scrollTop || top + ROW > scroller.scrollTop + scroller.clientHeight) {
    scroller.scrollTop = Math.max(0, top - scroller.clientHeight / 3);
  }
}

function focusOn(i) {
  focusRow = i;
  scrollToRow(i);
  render(true);
  const el = canvas.querySelector(`[data-i="${i}"]`);
  if (el) el.focus({ preventScroll: true });
}

function revealRow(i) {
  let changed = false;
  for (let p = rows[i][1]; p >= 0; p = rows[p][1]) {
    if (collapsed[p]) {
      collapsed[p] = 0;
      changed = true;
    }
  }
  if (onlyErrors && !errorBelow[i]) {
    onlyErrors = false;
    document.getElementById("only-errors").checked = false;
    changed = true;
  }
  if (changed) computeVisible();
}

async function select(i, { focus = true, push = true } = {}) {
  revealRow(i);
  selected = i;
  if (focus) focusOn(i);
  else {
    scrollToRow(i);
    render(true);
  }
  const sid = rows[i][0];
  if (push) history.replaceState(null, "", `?span=${sid}`);
  if (panel.querySelector(`[data-span="${sid}"]`)) return;
  const response = await fetch(`/traces/${traceId}/spans/${sid}`, { credentials: "same-origin" });
  if (response.ok && selected === i) panel.innerHTML = await response.text();
}

function toggle(i, open) {
  if (!children[i]) return;
  collapsed[i] = open === undefined ? 1 - collapsed[i] : open ? 0 : 1;
  refresh();
}

canvas.addEventListener("click", (event) => {
  const rowEl = event.target.closest(".wf-row");
  if (!rowEl) return;
  const i = Number(rowEl.dataset.i);
  if (event.target.closest(".tog")) {
    focusRow = i;
    toggle(i);
    return;
  }
  select(i);
});

grid.addEventListener("keydown", (event) => {
  const rowEl = event.target.closest(".wf-row[data-i]");
  if (!rowEl) return;
  const i = Number(rowEl.dataset.i);
  const pos = position[i];
  const page = Math.max(1, Math.floor(scroller.clientHeight / ROW) - 1);
  let target = -1;
  switch (event.key) {
    case "ArrowDown": target = visible[Math.min(visible.length - 1, pos + 1)]; break;
    case "ArrowUp": target = visible[Math.max(0, pos - 1)]; break;
    case "PageDown": target = visible[Math.min(visible.length - 1, pos + page)]; break;
    case "PageUp": target = visible[Math.max(0, pos - page)]; break;
    case "Home": target = visible[0]; break;
    case "End": target = visible[visible.length - 1]; break;
    case "ArrowRight":
      if (children[i] && collapsed[i]) { toggle(i, true); focusOn(i); }
      else if (children[i]) target = visible[pos + 1];
      break;
    case "ArrowLeft":
      if (children[i] && !collapsed[i]) { toggle(i, false); focusOn(i); }
      else if (rows[i][1] >= 0) target = rows[i][1];
      break;
    case "Enter":
    case " ":
      select(i);
      break;
    default:
      return;
  }
  event.preventDefault();
  if (target !== undefined && target >= 0) focusOn(target);
});

let pending = false;
scroller.addEventListener("scroll", () => {
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => {
    pending = false;
    render();
  });
});

document.getElementById("only-errors").addEventListener("change", (event) => {
  onlyErrors = event.target.checked;
  refresh();
});
document.getElementById("expand-all").addEventListener("click", () => {
  collapsed.fill(0);
  refresh();
});
document.getElementById("collapse-all").addEventListener("click", () => {
  for (let i = 0; i < n; i++) collapsed[i] = rows[i][1] < 0 && children[i] ? 1 : 0;
  refresh();
});
const jump = document.getElementById("jump-rc");
if (data.root_cause && byId.has(data.root_cause)) {
  jump.addEventListener("click", () => select(byId.get(data.root_cause)));
}

// Links to spans elsewhere on the page (chain of consequences, log lines).
document.addEventListener("click", (event) => {
  const link = event.target.closest("a[data-span]");
  if (!link || !byId.has(link.dataset.span)) return;
  event.preventDefault();
  select(byId.get(link.dataset.span));
  grid.scrollIntoView({ block: "nearest" });
});

const initial = panel.querySelector("[data-span]");
selected = initial && byId.has(initial.dataset.span) ? byId.get(initial.dataset.span) : -1;
focusRow = selected >= 0 ? selected : 0;
computeVisible();
if (selected >= 0) scrollToRow(selected);
render(true);
document.body.dataset.ready = "1";
