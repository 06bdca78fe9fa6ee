"use strict";
// The board of herald's admin API: a snapshot, then one message per changed cell (and per
// periodic reconcile), over server-sent events. Event values are data: they only ever go into
// textContent.
const cells = new Map();
let stages = [];
let stageOrder = [];
let reconciledAt = null;
const key = (source, stage) => source + "\u0000" + stage;
const $ = (id) => document.getElementById(id);

function age(at) {
  const s = Math.max(0, Math.floor((Date.now() - Date.parse(at)) / 1000));
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m";
  if (s < 86400) return Math.floor(s / 3600) + "h";
  return Math.floor(s / 86400) + "d";
}

// What the status table holds where a reconcile found it differing: its value, and which side
// is newer. The cell itself shows the topic's.
function tableSide(mark) {
  if (!mark.table) return "not in the table";
  const t = mark.table;
  let text = "table: " + t.status + (t.records != null ? " (" + t.records + ")" : "");
  if (mark.newer === "table") text += " · table newer";
  else if (mark.newer === "topic") text += " · topic newer";
  else text += " · same instant";
  return text;
}

function fill(td, cell) {
  td.textContent = "";
  td.className = "";
  td.dataset.status = cell ? cell.status : "";
  if (!cell) { td.className = "none"; td.textContent = "–"; td.title = ""; return; }
  const alert = cell.event === "STAGE_LATE" || cell.event === "STAGE_MISSING";
  td.className = alert ? "alert" : cell.status.replace(/[^A-Za-z0-9_-]/g, "");
  td.dataset.event = cell.event;
  const st = document.createElement("span");
  st.className = "st";
  st.textContent = alert ? cell.event.replace("STAGE_", "") : cell.status;
  const ago = document.createElement("span");
  ago.className = "age";
  ago.dataset.at = cell.at;
  ago.textContent = age(cell.at);
  td.append(st, ago);
  td.title = cell.event + " · " + cell.timestamp + (cell.records != null ? " · " + cell.records + " records" : "");
  const marks = cell.diverged || [];
  if (marks.length > 0) {
    // A periodic reconcile found the status table disagreeing with the topic on this pair.
    td.classList.add("diverged");
    for (const mark of marks) {
      const side = document.createElement("div");
      side.className = "table-side";
      side.textContent = "≠ " + tableSide(mark);
      td.append(side);
      td.title += " · " + mark.by + ": " + mark.verdict + (mark.table ? " (table: " + mark.table.status + " at " + mark.table.timestamp + ")" : "");
    }
  }
}

function summary() {
  const diverged = [...cells.values()].filter((c) => (c.diverged || []).length > 0).length;
  $("diverged").textContent = diverged + " diverged";
  $("diverged").className = diverged > 0 ? "meta bad" : "meta";
  $("reconciled").textContent = reconciledAt ? "reconciled " + age(reconciledAt) + " ago" : "no reconcile yet";
}

function placeStage(stage) {
  if (stages.includes(stage)) return;
  const rank = stageOrder.indexOf(stage);
  if (rank < 0) { stages.push(stage); return; }
  // Before the first shown stage that comes after it in the pipeline (or any unnamed stage).
  const at = stages.findIndex((s) => { const r = stageOrder.indexOf(s); return r < 0 || r > rank; });
  if (at < 0) stages.push(stage); else stages.splice(at, 0, stage);
}

function render() {
  const sources = [...new Set([...cells.values()].map((c) => c.source))].sort();
  const head = document.createElement("tr");
  for (const name of ["source", ...stages]) {
    const th = document.createElement("th");
    th.textContent = name;
    head.append(th);
  }
  $("board").tHead.replaceChildren(head);
  const rows = sources.map((source) => {
    const tr = document.createElement("tr");
    const th = document.createElement("th");
    th.textContent = source;
    tr.append(th);
    for (const stage of stages) {
      const td = document.createElement("td");
      td.dataset.source = source;
      td.dataset.stage = stage;
      fill(td, cells.get(key(source, stage)));
      tr.append(td);
    }
    return tr;
  });
  $("board").tBodies[0].replaceChildren(...rows);
  $("empty").hidden = sources.length > 0;
  $("count").textContent = sources.length + " sources · " + stages.length + " stages";
  summary();
}

function update(cell) {
  const fresh = !cells.has(key(cell.source, cell.stage));
  cells.set(key(cell.source, cell.stage), cell);
  placeStage(cell.stage);
  const td = [...document.querySelectorAll("td[data-stage]")]
    .find((td) => td.dataset.source === cell.source && td.dataset.stage === cell.stage);
  if (fresh || !td) render(); else { fill(td, cell); summary(); }
  const shown = [...document.querySelectorAll("td[data-stage]")]
    .find((td) => td.dataset.source === cell.source && td.dataset.stage === cell.stage);
  if (shown) { shown.classList.remove("flash"); void shown.offsetWidth; shown.classList.add("flash"); }
}

function connect() {
  const events = new EventSource(location.pathname.replace(/\/?$/, "/events"));
  events.addEventListener("snapshot", (e) => {
    const snapshot = JSON.parse(e.data);
    cells.clear();
    stages = snapshot.stages;
    stageOrder = snapshot.stage_order || [];
    reconciledAt = snapshot.reconciled_at || null;
    for (const cell of snapshot.cells) cells.set(key(cell.source, cell.stage), cell);
    render();
    $("conn").textContent = "live";
    $("conn").className = "meta live";
  });
  events.addEventListener("cell", (e) => update(JSON.parse(e.data)));
  events.addEventListener("reconciled", (e) => { reconciledAt = JSON.parse(e.data); summary(); });
  events.onerror = () => {
    $("conn").textContent = "reconnecting…";
    $("conn").className = "meta down";
    // Refused (too many live pages open) or gone: the browser does not retry that; try later.
    if (events.readyState === EventSource.CLOSED) setTimeout(connect, 5000);
  };
}

setInterval(() => {
  document.querySelectorAll(".age").forEach((e) => { e.textContent = age(e.dataset.at); });
  summary();
}, 1000);
connect();
