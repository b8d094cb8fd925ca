// The netmodels dashboard: polls GET status/all every second and draws the
// connections, closes by reason, counters and each topology's section.
// Vanilla JS and inline SVG, no build step and nothing fetched from elsewhere.
"use strict";

const POLL_MS = 1000;
const CHART_MINUTES = 10;
const REASON_COLOURS = {
  clean: "#2a8a2a", reset: "#c0392b", aborted: "#e67e22", refused: "#8e44ad", timeout: "#d35400",
  unreachable: "#7f8c8d", "protocol-error": "#a93226", rejected: "#2c3e50",
};
const MEMBER_COLOURS = { alive: "#2a8a2a", suspect: "#e6a100", dead: "#c0392b", left: "#999999", self: "#2a8a2a" };
const SVG_NS = "http://www.w3.org/2000/svg";
// Sections drawn on their own; any other section a topology adds is drawn as a table.
const KNOWN = new Set(["node", "keepalive", "limits", "connections", "counters", "peers", "mesh",
  "many_to_one", "callback"]);

const $ = (id) => document.getElementById(id);

function el(tag, attributes = {}, children = []) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "text") node.textContent = value;
    else if (value !== null && value !== undefined) node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function svg(tag, attributes = {}, text = null) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text !== null) node.textContent = text;
  return node;
}

function colour(reason) {
  if (REASON_COLOURS[reason]) return REASON_COLOURS[reason];
  let hash = 0;
  for (const c of String(reason)) hash = (hash * 31 + c.charCodeAt(0)) >>> 0;
  return `hsl(${hash % 360}, 55%, 45%)`;
}

function ago(seconds) {
  if (seconds < 60) return `${Math.max(0, Math.round(seconds))} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  return `${(seconds / 3600).toFixed(1)} h ago`;
}

function scalar(value) {
  if (value === null || value === undefined) return "";
  if (Array.isArray(value)) return value.map(scalar).join(", ");
  if (typeof value === "object") return Object.entries(value).map(([k, v]) => `${k}=${scalar(v)}`).join(" ");
  return String(value);
}

// --- connections --------------------------------------------------------------------

function connectionRow(doc, c, now) {
  const live = c.closed_at === null;
  const when = live ? `opened ${ago(now - c.opened_at)}` : `closed ${ago(now - c.closed_at)}`;
  const cells = [
    [doc.node.id], [c.id, "num"], [c.peer], [c.peer_id], [c.direction], [c.state],
    [c.reason, `reason reason-${c.reason}`], [c.initiator], [c.errno],
    [c.rtt === null ? "" : (c.rtt * 1000).toFixed(2), "num"],
    [`${c.messages_in}/${c.messages_out}`, "num"], [`${c.bytes_in}/${c.bytes_out}`, "num"],
    [when], [c.detail],
  ].map(([value, cls]) => el("td", { class: cls, text: scalar(value) }));
  const actions = el("td");
  if (live) {
    for (const action of ["close", "reset"]) {
      const button = el("button", { type: "button", text: action, title: `${action} connection ${c.id}` });
      button.addEventListener("click", () => command(doc.node.id, c.id, action));
      actions.append(button);
    }
  }
  return el("tr", {
    class: `${live ? "live" : c.state} ${c.state}`, "data-node": doc.node.id, "data-id": c.id,
    "data-state": c.state, "data-reason": c.reason, "data-peer-id": c.peer_id,
  }, [...cells, actions]);
}

function drawConnections(docs, now) {
  const rows = [];
  let live = 0;
  let closed = 0;
  for (const doc of docs) {
    for (const c of doc.connections) {
      rows.push([c.closed_at === null ? 0 : 1, -(c.closed_at || c.opened_at), doc, c]);
      if (c.closed_at === null) live += 1; else closed += 1;
    }
  }
  // Live connections first, then the most recently closed.
  rows.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  $("connections").tBodies[0].replaceChildren(...rows.map(([, , doc, c]) => connectionRow(doc, c, now)));
  $("connections-summary").textContent = `${live} live, ${closed} recently closed`;
}

// The admin token (the node's --admin-token-file) for close and reset: kept for this tab only.
const TOKEN_KEY = "netmodels-admin-token";
$("admin-token").value = sessionStorage.getItem(TOKEN_KEY) || "";
$("admin-token").addEventListener("input", (event) => sessionStorage.setItem(TOKEN_KEY, event.target.value));

async function command(nodeId, connectionId, action) {
  const url = `connections/${connectionId}/${action}?node=${encodeURIComponent(nodeId)}`;
  const token = $("admin-token").value.trim();
  const response = await fetch(url, { method: "POST", headers: token ? { Authorization: `Bearer ${token}` } : {} });
  const answer = await response.json();
  // Stays until the next command (the problem line is redrawn every second).
  const result = $("command-result");
  result.textContent = `${action} ${connectionId} on ${nodeId}: ${response.ok ? "done" : answer.error}`;
  result.className = response.ok ? "done" : "failed";
  tick();
}

// --- closes by reason ---------------------------------------------------------------

function closesByMinute(docs, now) {
  const start = now - CHART_MINUTES * 60;
  const buckets = Array.from({ length: CHART_MINUTES }, () => ({}));
  const totals = {};
  for (const doc of docs) {
    for (const c of doc.connections) {
      if (c.closed_at === null || c.reason === null || c.closed_at < start) continue;
      const index = Math.min(CHART_MINUTES - 1, Math.floor((c.closed_at - start) / 60));
      buckets[index][c.reason] = (buckets[index][c.reason] || 0) + 1;
      totals[c.reason] = (totals[c.reason] || 0) + 1;
    }
  }
  return { buckets, totals };
}

function drawCloses(docs, now) {
  const { buckets, totals } = closesByMinute(docs, now);
  const reasons = Object.keys(totals).sort();
  const width = 600;
  const height = 160;
  const left = 30;
  const bottom = 20;
  const most = Math.max(1, ...buckets.map((b) => Object.values(b).reduce((s, n) => s + n, 0)));
  const barWidth = (width - left) / CHART_MINUTES;
  const scale = (height - bottom - 10) / most;
  const chart = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": "closes by reason per minute" });
  chart.append(svg("line", { x1: left, y1: height - bottom, x2: width, y2: height - bottom, stroke: "#999" }));
  chart.append(svg("text", { x: 2, y: 14 }, String(most)));
  chart.append(svg("text", { x: 2, y: height - bottom }, "0"));
  buckets.forEach((bucket, index) => {
    let y = height - bottom;
    const x = left + index * barWidth + 2;
    for (const reason of reasons) {
      const count = bucket[reason] || 0;
      if (!count) continue;
      const h = count * scale;
      y -= h;
      const bar = svg("rect", { x, y, width: barWidth - 4, height: h, fill: colour(reason),
        "data-reason": reason, "data-count": count });
      bar.append(svg("title", {}, `${reason}: ${count}`));
      chart.append(bar);
    }
    const minutesAgo = CHART_MINUTES - index;
    if (minutesAgo % 2 === 0 || minutesAgo === 1) {
      chart.append(svg("text", { x, y: height - 5 }, minutesAgo === 1 ? "now" : `-${minutesAgo}m`));
    }
  });
  $("closes-chart").replaceChildren(chart);
  $("closes-minutes").textContent = CHART_MINUTES;
  const legend = reasons.flatMap((reason) => [
    el("span", { class: "swatch", style: `background:${colour(reason)}` }),
    el("span", { class: "total", "data-reason": reason, text: `${reason} ${totals[reason]}` }),
  ]);
  $("closes-legend").replaceChildren(...(legend.length ? legend : ["no closes in this window"]));
}

// --- counters and generic sections ---------------------------------------------------

function drawCounters(docs) {
  const rows = docs.map((doc) => el("tr", {}, [
    el("th", { text: doc.node.id }),
    el("td", { text: Object.entries(doc.counters).map(([k, v]) => `${k} ${v}`).join(", ") || "none yet" }),
  ]));
  $("counters").tBodies[0].replaceChildren(...rows);
}

// A table of an object: scalars as key/value rows; an object of objects (clients) as a table.
function sectionTable(value) {
  const parts = [];
  const pairs = el("table", { class: "kv" });
  for (const [key, item] of Object.entries(value || {})) {
    const rows = item && typeof item === "object" && !Array.isArray(item) ? Object.values(item) : [];
    if (rows.length && rows.every((row) => row && typeof row === "object" && !Array.isArray(row))) {
      const columns = [...new Set(rows.flatMap(Object.keys))];
      const head = el("tr", {}, [el("th", { text: key }), ...columns.map((c) => el("th", { text: c }))]);
      const body = Object.entries(item).map(([name, row]) => el("tr", {}, [
        el("td", { text: name }), ...columns.map((c) => el("td", { text: scalar(row[c]) })),
      ]));
      parts.push(el("table", { "data-key": key }, [el("thead", {}, [head]), el("tbody", {}, body)]));
    } else {
      pairs.append(el("tr", {}, [el("th", { text: key }), el("td", { text: scalar(item) })]));
    }
  }
  return [pairs, ...parts];
}

function drawSection(docs, key, sectionId, containerId) {
  const owners = docs.filter((doc) => doc[key] !== undefined);
  $(sectionId).hidden = owners.length === 0;
  $(containerId).replaceChildren(...owners.flatMap((doc) => [
    el("h3", { text: doc.node.id }), ...sectionTable(doc[key]),
  ]));
}

function drawOtherSections(docs) {
  const blocks = [];
  for (const doc of docs) {
    for (const key of Object.keys(doc)) {
      if (KNOWN.has(key)) continue;
      blocks.push(el("h2", { text: `${key} (${doc.node.id})` }), ...sectionTable(
        doc[key] && typeof doc[key] === "object" && !Array.isArray(doc[key]) ? doc[key] : { value: doc[key] }));
    }
  }
  $("other-sections").replaceChildren(...blocks);
}

// --- p2p -----------------------------------------------------------------------------

function meshGraph(docs) {
  const members = new Map();  // id -> {state, local}
  const edges = new Map();    // "a|b" (sorted) -> [a, b]
  for (const doc of docs.filter((d) => d.peers)) {
    members.set(doc.node.id, { state: "self", local: true });
    for (const peer of doc.peers) {
      const known = members.get(peer.id);
      if (!known) members.set(peer.id, { state: peer.state, local: false });
      else if (!known.local && known.state === "alive") known.state = peer.state;
      if (peer.connected) {
        const pair = [doc.node.id, peer.id].sort();
        edges.set(pair.join("|"), pair);
      }
    }
  }
  return { members, edges: [...edges.values()] };
}

function drawMesh(docs) {
  const withPeers = docs.filter((doc) => doc.peers);
  $("p2p-section").hidden = withPeers.length === 0;
  if (!withPeers.length) return;
  const { members, edges } = meshGraph(docs);
  const size = 360;
  const centre = size / 2;
  const radius = members.size > 1 ? size / 2 - 50 : 0;
  const ids = [...members.keys()].sort();
  const at = new Map(ids.map((id, i) => {
    const angle = (2 * Math.PI * i) / ids.length - Math.PI / 2;
    return [id, [centre + radius * Math.cos(angle), centre + radius * Math.sin(angle)]];
  }));
  const graph = svg("svg", { width: size, height: size, viewBox: `0 0 ${size} ${size}`, role: "img",
    "aria-label": "p2p members and sessions" });
  for (const [a, b] of edges) {
    const [x1, y1] = at.get(a);
    const [x2, y2] = at.get(b);
    graph.append(svg("line", { x1, y1, x2, y2, stroke: "#5b7fa6", "stroke-width": 2, class: "edge",
      "data-a": a, "data-b": b }));
  }
  for (const id of ids) {
    const { state, local } = members.get(id);
    const [x, y] = at.get(id);
    const circle = svg("circle", { cx: x, cy: y, r: 12, fill: MEMBER_COLOURS[state] || "#999",
      stroke: local ? "#000" : "#fff", "stroke-width": local ? 3 : 1, class: "member", "data-id": id,
      "data-state": state });
    circle.append(svg("title", {}, `${id}: ${state === "self" ? "this process" : state}`));
    graph.append(circle);
    graph.append(svg("text", { x: x + 15, y: y + 4 }, id));
  }
  $("p2p-graph").replaceChildren(graph);
  $("p2p-peers").replaceChildren(...withPeers.flatMap((doc) => [
    el("h3", { text: `${doc.node.id}: ${scalar(doc.mesh && doc.mesh.by_state)}` }),
    ...sectionTable(doc.mesh),
    ...sectionTable({ peers: Object.fromEntries(doc.peers.map((p) => [p.id, {
      state: p.state, connected: p.connected, via: p.via, last_reason: p.last_reason, endpoints: p.endpoints,
    }])) }),
  ]));
}

// --- polling -------------------------------------------------------------------------

function showProblem(text) {
  $("problem").hidden = !text;
  $("problem").textContent = text || "";
}

async function tick() {
  let docs;
  let now;
  try {
    const response = await fetch("status/all", { cache: "no-store" });
    docs = await response.json();
    // The node's clock, so "ago" and the chart's minutes hold even when this browser's clock is off.
    const date = Date.parse(response.headers.get("date") || "");
    now = (Number.isNaN(date) ? Date.now() : date) / 1000;
  } catch (error) {
    showProblem(`status unreachable: ${error.message}`);
    return;
  }
  showProblem("");
  $("nodes").textContent = docs.map((d) => `${d.node.id} (${d.node.topology} ${d.node.role})`).join(", ");
  $("keepalive").textContent = docs.length ? docs[0].keepalive.describe : "";
  drawConnections(docs, now);
  drawCloses(docs, now);
  drawCounters(docs);
  drawMesh(docs);
  drawSection(docs, "many_to_one", "many-to-one-section", "many-to-one");
  drawSection(docs, "callback", "callback-section", "callback");
  drawOtherSections(docs);
  document.body.dataset.updated = String(now);
}

tick();
setInterval(tick, POLL_MS);
