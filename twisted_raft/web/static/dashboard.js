// The raftkv dashboard: draws GET api/cluster (twisted_raft/web/clusterview.py)
// every REFRESH_MS.  Every value goes in through textContent or as a number
// in an SVG attribute, never as HTML; the page only reads.
"use strict";

(function () {
  const REFRESH_MS = 500;   // the node polls its members every 0.5 s
  const TIMEOUT_MS = 2000;  // one fetch; then the page says the node is not answering
  const SVG = "http://www.w3.org/2000/svg";
  const CHART = { width: 1000, height: 200, left: 44, right: 10, top: 10, bottom: 22, span: 60 };
  const COLUMNS = ["node", "address", "role", "member", "term", "commit", "applied", "lag", "contact"];
  const NUMERIC = new Set(["term", "commit", "applied", "lag", "contact"]);

  const $ = (id) => document.getElementById(id);
  const rows = new Map();  // node id -> <tr>
  let lastUpdate = null;

  function show(el, value) {
    el.textContent = value === null || value === undefined ? "—" : String(value);
  }

  function rate(value) {
    if (value === null || value === undefined) return null;
    return value < 10 ? value.toFixed(1) : Math.round(value).toLocaleString("en");
  }

  function contact(member, selfId) {
    if (member.node_id === selfId) return "local";
    if (member.last_contact === null) return null;
    return member.last_contact.toFixed(1) + " s ago";
  }

  function rowFor(id, selfId) {
    let tr = rows.get(id);
    if (tr) return tr;
    tr = document.createElement("tr");
    tr.dataset.nodeId = String(id);
    if (id === selfId) tr.classList.add("self");
    for (const name of COLUMNS) {
      const td = document.createElement("td");
      td.className = name + (NUMERIC.has(name) ? " num" : "");
      if (name === "role") {
        const badge = document.createElement("span");
        badge.className = "badge";
        td.appendChild(badge);
      }
      tr.appendChild(td);
    }
    rows.set(id, tr);
    return tr;
  }

  function drawMembers(data) {
    const body = $("member-rows");
    const seen = new Set();
    for (const m of data.members) {
      const tr = rowFor(m.node_id, data.node_id);
      seen.add(m.node_id);
      tr.dataset.role = m.role;
      const cells = tr.children;
      show(cells[0], m.node_id);
      show(cells[1], m.address || null);
      show(cells[2].firstChild, m.role);
      show(cells[3], m.voter ? "voter" : "learner");
      show(cells[4], m.term);
      show(cells[5], m.commit_index);
      show(cells[6], m.last_applied);
      show(cells[7], m.lag);
      show(cells[8], contact(m, data.node_id));
      body.appendChild(tr);  // keeps the server's order (by id)
    }
    for (const [id, tr] of rows) {
      if (!seen.has(id)) { tr.remove(); rows.delete(id); }
    }
  }

  function drawCards(data) {
    show($("seen-by"), "the cluster as node " + data.node_id + " sees it");
    show($("leader"), data.leader_id === null ? "none" : "node " + data.leader_id);
    show($("term"), data.term === null ? "no member answers as leader" : "term " + data.term);
    show($("tolerated"), data.failures_tolerated);
    show($("voters"), data.voters_up + " of " + data.voters + " voters up, quorum " + data.quorum);
    show($("writes"), rate(data.rates.writes));
    show($("reads"), rate(data.rates.reads));
  }

  function svg(name, attrs, text) {
    const el = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
    if (text !== undefined) el.textContent = text;
    return el;
  }

  function niceMax(value) {
    if (!(value > 0)) return 1;
    const step = Math.pow(10, Math.floor(Math.log10(value)));
    for (const m of [1, 2, 5, 10]) if (m * step >= value) return m * step;
    return 10 * step;
  }

  // One path per series; a null sample (nobody was watching) breaks the line.
  function pathOf(history, key, x, y) {
    let d = "";
    let pen = false;
    for (const s of history) {
      const v = s[key];
      if (v === null || v === undefined || !Number.isFinite(v)) { pen = false; continue; }
      d += (pen ? "L" : "M") + x(s.time).toFixed(1) + " " + y(v).toFixed(1);
      pen = true;
    }
    return d;
  }

  function drawChart(data) {
    const chart = $("chart");
    const c = CHART;
    const history = data.rates.history;
    const values = history.flatMap((s) => [s.writes, s.reads]).filter((v) => Number.isFinite(v));
    const top = niceMax(Math.max(0, ...values));
    const x = (t) => c.left + (c.width - c.left - c.right) * (1 - (data.time - t) / c.span);
    const y = (v) => c.top + (c.height - c.top - c.bottom) * (1 - v / top);
    const parts = [];
    for (const f of [0, 0.5, 1]) {
      const v = top * f;
      parts.push(svg("line", { x1: c.left, x2: c.width - c.right, y1: y(v), y2: y(v), class: "grid" }));
      parts.push(svg("text", { x: c.left - 6, y: y(v) + 4, "text-anchor": "end", class: "axis" },
                     v >= 1000 ? Math.round(v).toLocaleString("en") : String(+v.toPrecision(3))));
    }
    for (const ago of [60, 45, 30, 15, 0]) {
      parts.push(svg("text", { x: x(data.time - ago), y: c.height - 6,
                               "text-anchor": ago === 60 ? "start" : ago === 0 ? "end" : "middle",
                               class: "axis" }, ago === 0 ? "now" : "-" + ago + " s"));
    }
    const recent = history.filter((s) => data.time - s.time <= c.span);
    parts.push(svg("path", { d: pathOf(recent, "writes", x, y), class: "writes" }));
    parts.push(svg("path", { d: pathOf(recent, "reads", x, y), class: "reads" }));
    chart.replaceChildren(...parts);
  }

  function setUpdated(ok, why) {
    const el = $("updated");
    if (ok) {
      lastUpdate = Date.now();
      el.classList.remove("stale");
      show(el, "live · updated " + new Date(lastUpdate).toLocaleTimeString("en-GB"));
    } else {
      el.classList.add("stale");
      const since = lastUpdate === null ? "" :
        " (last update " + ((Date.now() - lastUpdate) / 1000).toFixed(0) + " s ago)";
      show(el, "this node is not answering: " + why + since);
    }
  }

  async function tick() {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), TIMEOUT_MS);
    try {
      const response = await fetch("api/cluster", { cache: "no-store", signal: abort.signal });
      if (!response.ok) throw new Error("HTTP " + response.status);
      const data = await response.json();
      drawMembers(data);
      drawCards(data);
      drawChart(data);
      setUpdated(true);
    } catch (e) {
      setUpdated(false, e && e.name === "AbortError" ? "timed out" : String(e && e.message || e));
    } finally {
      clearTimeout(timer);
      setTimeout(tick, REFRESH_MS);
    }
  }

  tick();
})();
