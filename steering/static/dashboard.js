// The fleet dashboard: every appliance by site, live from steering's /fleet/events.
"use strict";

(function () {
  const sites = document.getElementById("sites");
  const conn = document.getElementById("conn");
  const control = document.body.dataset.control;
  const HISTORY = 60; // points per sparkline: one a second
  const cards = new Map(); // appliance id -> {el, egress: [], hits: []}
  const qoe = {};
  window.streamcdnFleet = {}; // id -> status, for tests and the console

  function num(x) { return typeof x === "number" && isFinite(x) ? x : null; }
  function fmtBytes(n) {
    n = num(n); if (n === null || n < 0) return "-";
    for (const u of ["B", "kB", "MB", "GB", "TB"]) { if (n < 1000 || u === "TB") return n.toFixed(u === "B" ? 0 : 1) + " " + u; n /= 1000; }
  }
  function pct(x) { x = num(x); return x === null ? "-" : Math.round(Math.min(1, Math.max(0, x)) * 100) + "%"; }
  function sum(obj) {
    if (!obj || typeof obj !== "object") return null;
    let s = 0; for (const v of Object.values(obj)) { if (num(v) !== null) s += v; } return s;
  }
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function spark(values, max, cls) {
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 " + HISTORY + " 20");
    svg.setAttribute("class", "spark " + cls);
    svg.setAttribute("preserveAspectRatio", "none");
    const top = Math.max(max, 1e-9);
    const pts = values.map((v, i) => (HISTORY - values.length + i) + "," + (20 - 19 * Math.min(1, v / top)).toFixed(1));
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", pts.join(" "));
    svg.appendChild(line);
    return svg;
  }

  function siteBox(name) {
    let box = document.getElementById("site-" + name);
    if (!box) {
      box = el("section", "site"); box.id = "site-" + name;
      box.appendChild(el("h2", null, name));
      box.appendChild(el("div", "cards"));
      sites.appendChild(box);
    }
    return box.querySelector(".cards");
  }

  function card(a) {
    let c = cards.get(a.id);
    if (!c) {
      const e = el("article", "card"); e.id = "appliance-" + a.id;
      c = { el: e, egress: [], hits: [] };
      cards.set(a.id, c);
      siteBox(String(a.site)).appendChild(e);
    }
    return c;
  }

  function render(a) {
    const c = card(a);
    const f = (a.figures && typeof a.figures === "object") ? a.figures : {};
    const status = ["up", "degraded", "draining", "down"].includes(a.status) ? a.status : "unknown";
    window.streamcdnFleet[a.id] = status;
    const egress = Math.max(0, num(a.egress_mbps) || 0);
    const capacity = Math.max(0, num(a.capacity_mbps) || 0);
    const hits = sum(f.byte_hit_ratio);
    c.egress.push(egress); if (c.egress.length > HISTORY) c.egress.shift();
    c.hits.push(hits === null ? 0 : Math.min(1, Math.max(0, hits))); if (c.hits.length > HISTORY) c.hits.shift();
    const tiers = (f.tiers && typeof f.tiers === "object") ? f.tiers : {};
    const limiter = (f.limiter && typeof f.limiter === "object") ? f.limiter : {};
    const q = qoe[a.id];
    const e = c.el;
    e.className = "card " + status;
    e.replaceChildren(
      el("h3", null, String(a.id)),
      el("span", "status", status + (a.reason ? ": " + a.reason : "")),
      el("div", "row", "egress " + egress.toFixed(1) + " / " + capacity.toFixed(0) + " Mbps"),
      spark(c.egress, Math.max(capacity, 1), "egress"),
      el("div", "row", "byte hits " + pct(hits)),
      spark(c.hits, 1, "hits"),
      el("div", "row", "memory " + fmtBytes(tiers.memory && tiers.memory.used_bytes) + " / " + fmtBytes(tiers.memory && tiers.memory.capacity_bytes)),
      el("div", "row", "disk " + fmtBytes(tiers.disk && tiers.disk.used_bytes) + " / " + fmtBytes(tiers.disk && tiers.disk.capacity_bytes)),
      el("div", "row", "conns " + (num(f.connections) ?? "-") + " · limit " + (num(limiter.in_flight) ?? "-") + "/" + (num(limiter.limit) ?? "-") + (limiter.shedding ? " shedding" : "") + " · fills " + (num(f.fills_in_flight) ?? "-")),
      el("div", "row", q ? "QoE: " + (num(q.stalls_per_hour) === null ? "-" : q.stalls_per_hour.toFixed(1)) + " stalls/h, " + (num(q.avg_bitrate_kbps) === null ? "-" : Math.round(q.avg_bitrate_kbps)) + " kbps" : "QoE: -"),
    );
  }

  function connect() {
    const source = new EventSource("/fleet/events");
    source.addEventListener("open", () => { conn.textContent = "live"; conn.className = "live"; });
    source.addEventListener("error", () => { conn.textContent = "reconnecting..."; conn.className = "lost"; });
    function each(data) { (Array.isArray(data.appliances) ? data.appliances : []).forEach((a) => { if (a && a.id) render(a); }); }
    source.addEventListener("fleet", (m) => each(JSON.parse(m.data)));
    source.addEventListener("tick", (m) => each(JSON.parse(m.data)));
    source.addEventListener("change", (m) => { const a = JSON.parse(m.data); if (a && a.id) render(a); });
  }

  async function pollQoe() {
    if (!control) return;
    try {
      const r = await fetch(control + "/events/summary");
      const data = await r.json();
      Object.assign(qoe, (data && data.appliances) || {});
    } catch (e) { /* control may be down: keep the last figures */ }
  }
  connect();
  pollQoe();
  setInterval(pollQoe, 5000);
})();
