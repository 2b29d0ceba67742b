// tcplb dashboard: polls /api/stats and draws it. Plain JavaScript, no library, nothing
// fetched from anywhere but the admin port. Every node is built with createElement and
// textContent (never markup from data), and updated in place: a row per backend is made
// once and only its changed cells are touched, so a thousand backends stay cheap.
"use strict";

(function () {
  const POLL_MS = 1000;
  const HIDDEN_POLL_MS = 10000;
  const SVG = "http://www.w3.org/2000/svg";

  // ---- small helpers ----------------------------------------------------------------

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    if (attrs) {
      for (const key of Object.keys(attrs)) node.setAttribute(key, attrs[key]);
    }
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  function setAttr(node, name, value) {
    if (node.getAttribute(name) !== value) node.setAttribute(name, value);
  }

  function num(v, digits) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    const a = Math.abs(v);
    if (a >= 1e9) return (v / 1e9).toFixed(1) + "G";
    if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (a >= 1e4) return (v / 1e3).toFixed(1) + "k";
    if (Number.isInteger(v)) return String(v);
    return v.toFixed(digits === undefined ? (a >= 100 ? 0 : a >= 10 ? 1 : 2) : digits);
  }

  function bytes(v) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (Math.abs(v) >= 1024 && i < units.length - 1) {
      v /= 1024;
      i++;
    }
    return (i === 0 ? String(Math.round(v)) : v.toFixed(v >= 100 ? 0 : 1)) + " " + units[i];
  }

  function ms(v) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    if (v >= 1000) return (v / 1000).toFixed(2) + " s";
    return (v >= 10 ? v.toFixed(0) : v.toFixed(2)) + " ms";
  }

  function duration(s) {
    const d = Math.floor(s / 86400);
    const h = Math.floor((s % 86400) / 3600);
    const m = Math.floor((s % 3600) / 60);
    if (d > 0) return d + "d " + h + "h";
    if (h > 0) return h + "h " + m + "m";
    return m + "m " + Math.floor(s % 60) + "s";
  }

  // ---- charts: a label, the current value, an SVG line over 15 minutes ---------------

  // A chart made once; update() redraws its line and figures.
  function Chart(parent, label, format) {
    const box = el("div", { class: "chart" });
    const head = el("div", { class: "head" });
    head.appendChild(el("span", null, label));
    const value = el("b");
    head.appendChild(value);
    box.appendChild(head);
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 450 36");
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", label + " over the last 15 minutes");
    const path = document.createElementNS(SVG, "path");
    svg.appendChild(path);
    box.appendChild(svg);
    const foot = el("div", { class: "foot" });
    const left = el("span");
    const max = el("span");
    foot.appendChild(left);
    foot.appendChild(max);
    box.appendChild(foot);
    parent.appendChild(box);
    this.update = function (values, capacity, interval) {
      values = values || [];
      capacity = capacity || values.length || 1;
      let top = 0;
      let last = null;
      for (const v of values) {
        if (v !== null && v > top) top = v;
        if (v !== null) last = v;
      }
      const scale = top > 0 ? 34 / top : 0;
      const offset = capacity - values.length;
      let d = "";
      let pen = false;
      values.forEach(function (v, i) {
        if (v === null) {
          pen = false;
          return;
        }
        const x = ((offset + i) * 450) / Math.max(capacity - 1, 1);
        const y = 35 - v * scale;
        d += (pen ? "L" : "M") + x.toFixed(1) + " " + y.toFixed(1);
        pen = true;
      });
      setAttr(path, "d", d);
      setText(value, format(last));
      setText(left, "−" + Math.round((capacity * interval) / 60000) + " min");
      setText(max, "max " + format(top));
    };
  }

  // A set of charts for one thing's history.
  function ChartSet(parent, specs) {
    const charts = specs.map(function (spec) {
      return { key: spec[0], chart: new Chart(parent, spec[1], spec[2]) };
    });
    this.update = function (history, meta) {
      for (const c of charts) {
        c.chart.update(history ? history[c.key] : [], meta.capacity, meta.interval_ms);
      }
    };
  }

  // ---- state words and badges ---------------------------------------------------------

  // Every label a backend has: its state, then backup, slow-start and a runtime mark.
  function labels(b) {
    const out = [b.state];
    if (b.admin && b.admin !== "ready" && b.admin !== b.state) out.push(b.admin);
    if (b.backup) out.push("backup");
    if (b.slow_start !== undefined && b.slow_start !== null) out.push("slow-start");
    return out;
  }

  const WORDS = {
    up: "up",
    down: "down",
    half_open: "half-open",
    draining: "draining",
    drain: "drain",
    maint: "maint",
    backup: "backup",
    "slow-start": "slow-start",
  };

  function badges(cell, names) {
    const key = names.join(" ");
    if (cell.dataset.key === key) return;
    cell.dataset.key = key;
    cell.textContent = "";
    for (const name of names) {
      cell.appendChild(el("span", { class: "badge st-" + name }, WORDS[name] || name));
    }
  }

  function legend() {
    const p = document.getElementById("legend");
    for (const name of ["up", "down", "half_open", "draining", "drain", "maint", "backup", "slow-start"]) {
      p.appendChild(el("span", { class: "badge st-" + name }, WORDS[name]));
    }
  }

  // ---- the process --------------------------------------------------------------------

  let processCharts = null;
  const figureNodes = {};

  function figure(key, label, text) {
    let node = figureNodes[key];
    if (!node) {
      const box = el("div");
      box.appendChild(el("dt", null, label));
      node = el("dd", { "data-figure": key });
      box.appendChild(node);
      document.getElementById("process-figures").appendChild(box);
      figureNodes[key] = node;
    }
    setText(node, text);
  }

  function renderProcess(data) {
    const p = data.process;
    const v = data.version;
    setText(document.getElementById("version"), v.version + " · commit " + v.commit + " · built " + v.built);
    figure("lifecycle", "state", p.lifecycle);
    figure("uptime", "uptime", duration(p.uptime_s));
    figure("workers", "workers", String(p.workers));
    figure("sessions", "sessions", num(p.sessions));
    figure("buffers", "buffers used", num(p.buffers.used) + " / " + num(p.buffers.total));
    figure("pipes", "pipes used", num(p.pipes.used) + " / " + num(p.pipes.total));
    figure("reloads", "reloads", p.reloads.ok + " ok, " + p.reloads.errors + " failed");
    figure("history", "history memory", bytes(p.history_bytes));
    if (!processCharts) {
      processCharts = new ChartSet(document.getElementById("process-charts"), [
        ["sessions", "sessions", num],
        ["accepted_per_s", "accepted /s", num],
        ["cpu_percent", "CPU %", num],
        ["resident_mib", "memory MiB", num],
        ["buffers_used", "buffers used", num],
      ]);
    }
    processCharts.update(data.history.process, data.history);
  }

  // ---- services -----------------------------------------------------------------------

  const services = new Map();

  function field(dl, label) {
    const box = el("div");
    box.appendChild(el("dt", null, label));
    const dd = el("dd");
    box.appendChild(dd);
    dl.appendChild(box);
    return dd;
  }

  function makeService(s) {
    const card = el("article", { class: "card", "data-service": s.name });
    card.appendChild(el("h3", null, s.name));
    const sub = el("div", { class: "muted" });
    card.appendChild(sub);
    const dl = el("dl", { class: "figures" });
    card.appendChild(dl);
    const cells = {
      sub: sub,
      active: field(dl, "sessions"),
      accepted: field(dl, "new /s"),
      shed: field(dl, "shed /s"),
      limited: field(dl, "limited /s"),
      queued: field(dl, "queued"),
    };
    const charts = el("div", { class: "charts" });
    card.appendChild(charts);
    cells.charts = new ChartSet(charts, [
      ["active", "sessions", num],
      ["accepted_per_s", "new /s", num],
      ["shed_per_s", "shed /s", num],
    ]);
    cells.card = card;
    return cells;
  }

  function renderServices(data) {
    const parent = document.getElementById("services");
    const seen = new Set();
    for (const s of data.services) {
      seen.add(s.name);
      let cells = services.get(s.name);
      if (!cells) {
        cells = makeService(s);
        services.set(s.name, cells);
        parent.appendChild(cells.card);
      }
      let sub = "listens on " + (s.listen.length ? s.listen.join(", ") : "nothing");
      sub += s.pool === null ? " · no default pool" : " → pool " + s.pool;
      if (s.routes && s.routes.length) {
        sub += " · TLS routes: " + s.routes.map(function (r) {
          let match = r.sni === null ? "any name" : r.sni;
          if (r.alpn !== null) match += " (" + r.alpn + ")";
          return match + " → " + (r.pool === null ? "reset" : r.pool);
        }).join(", ");
      }
      setText(cells.sub, sub);
      setText(cells.active, num(s.active));
      setText(cells.accepted, num(s.now.accepted_per_s));
      setText(cells.shed, num(s.now.shed_per_s) + " (" + num(s.shed_total) + " in all)");
      setText(cells.limited, num(s.now.limited_per_s) + " (" + num(s.limited_total) + " in all)");
      setText(cells.queued, num(s.queued));
      cells.charts.update(s.history, data.history);
    }
    for (const [name, cells] of services) {
      if (!seen.has(name)) {
        cells.card.remove();
        services.delete(name);
      }
    }
  }

  // ---- pools and backends -------------------------------------------------------------

  const pools = new Map();
  const COLUMNS = [
    ["state", "state", ""],
    ["backend", "backend", ""],
    ["weight", "weight", "num"],
    ["active", "active", "num"],
    ["rate", "sessions /s", "num"],
    ["resp", "response p50 / p99", "num wide"],
    ["sent", "sent /s", "num wide"],
    ["received", "received /s", "num wide"],
    ["checks", "checks", "wide"],
    ["fails", "failed connects", "num wide"],
    ["reason", "why", ""],
  ];

  function makePool(p) {
    const box = el("article", { class: "pool", "data-pool": p.name });
    box.appendChild(el("h3", null, "pool " + p.name));
    const sub = el("div", { class: "muted" });
    box.appendChild(sub);
    const dl = el("dl", { class: "figures" });
    box.appendChild(dl);
    const cells = {
      box: box,
      sub: sub,
      up: field(dl, "backends up"),
      active: field(dl, "sessions"),
      rate: field(dl, "sessions /s"),
      queue: field(dl, "queued"),
      connect: field(dl, "connect p50 / p99"),
      rows: new Map(),
      order: "",
    };
    const charts = el("div", { class: "charts" });
    box.appendChild(charts);
    cells.charts = new ChartSet(charts, [
      ["sessions_per_s", "sessions /s", num],
      ["active", "sessions", num],
      ["connect_p99_ms", "connect p99", ms],
      ["backends_up", "backends up", num],
    ]);
    const wrap = el("div", { class: "table-wrap" });
    const table = el("table");
    const thead = el("thead");
    const tr = el("tr");
    for (const c of COLUMNS) tr.appendChild(el("th", { class: c[2] }, c[1]));
    thead.appendChild(tr);
    table.appendChild(thead);
    cells.tbody = el("tbody");
    table.appendChild(cells.tbody);
    wrap.appendChild(table);
    box.appendChild(wrap);
    return cells;
  }

  function makeRow(b) {
    const tr = el("tr", { class: "backend", tabindex: "0", "data-backend": b.address, "data-id": String(b.id) });
    const cells = { tr: tr };
    for (const c of COLUMNS) {
      const td = el("td", { class: (c[2] + " " + c[0]).trim() });
      tr.appendChild(td);
      cells[c[0]] = td;
    }
    tr.addEventListener("click", function () {
      toggleDetail(cells);
    });
    tr.addEventListener("keydown", function (e) {
      if (e.key === "Enter" || e.key === " ") {
        e.preventDefault();
        toggleDetail(cells);
      }
    });
    return cells;
  }

  function updateRow(cells, b) {
    const names = labels(b);
    badges(cells.state, names);
    setAttr(cells.tr, "data-state", b.state);
    let name = b.address;
    if (b.name && b.name !== b.address) name += " (" + b.name + ")";
    setText(cells.backend, name);
    let weight = String(b.weight);
    if (b.weight_effective !== undefined && String(b.weight_effective) !== String(b.weight)) {
      weight += " → " + b.weight_effective;
    }
    if (b.slow_start !== undefined && b.slow_start !== null) {
      weight += " (" + Math.round(b.slow_start * 100) + "%)";
    }
    setText(cells.weight, weight);
    setText(cells.active, num(b.active) + (b.maxconn ? " / " + b.maxconn : ""));
    setText(cells.rate, num(b.now.sessions_per_s));
    setText(cells.resp, ms(b.now.response_p50_ms) + " / " + ms(b.now.response_p99_ms));
    setText(cells.sent, bytes(b.now.sent_bytes_per_s) + "/s");
    setText(cells.received, bytes(b.now.received_bytes_per_s) + "/s");
    let checks = b.health_checks;
    if (b.last_check) checks += ": " + b.last_check;
    setText(cells.checks, checks);
    setText(cells.fails, num(b.connect_failures_total) + (b.consecutive_failures ? " (" + b.consecutive_failures + " in a row)" : ""));
    let reason = b.reason || "";
    if (!reason && b.admin === "drain") reason = "drained by the operator: no new sessions";
    if (!reason && b.admin === "maint") reason = "in maintenance: no sessions, no checks";
    setText(cells.reason, reason);
  }

  // ---- a backend's own history, on demand -----------------------------------------------

  const open = new Map(); // backend id -> detail record

  function toggleDetail(cells) {
    const id = cells.tr.dataset.id;
    const existing = open.get(id);
    if (existing) {
      existing.tr.remove();
      open.delete(id);
      return;
    }
    const tr = el("tr", { class: "detail" });
    const td = el("td", { colspan: String(COLUMNS.length) });
    tr.appendChild(td);
    const charts = el("div", { class: "charts" });
    td.appendChild(charts);
    const strip = el("div", { class: "strip", "aria-label": "state over the last 15 minutes" });
    td.appendChild(strip);
    const record = {
      tr: tr,
      row: cells.tr,
      strip: strip,
      charts: new ChartSet(charts, [
        ["sessions_per_s", "sessions /s", num],
        ["active", "active", num],
        ["response_p99_ms", "response p99", ms],
        ["sent_bytes_per_s", "sent /s", bytes],
        ["received_bytes_per_s", "received /s", bytes],
        ["connect_failures_per_s", "failed connects /s", num],
      ]),
    };
    open.set(id, record);
    cells.tr.after(tr);
    loadDetail(id, record);
  }

  function loadDetail(id, record) {
    fetch("/api/history?backend=" + encodeURIComponent(id), { cache: "no-store" })
      .then(function (r) {
        return r.ok ? r.json() : null;
      })
      .then(function (h) {
        if (!h || open.get(id) !== record) return;
        const meta = { capacity: 450, interval_ms: h.interval_ms };
        record.charts.update(h.history, meta);
        const states = h.history.state || [];
        const key = states.join(",");
        if (record.strip.dataset.key !== key) {
          record.strip.dataset.key = key;
          record.strip.textContent = "";
          for (let i = states.length; i < 450; i++) record.strip.appendChild(el("span", { class: "none" }));
          for (const s of states) {
            const span = el("span", { class: s === null ? "none" : "s" + s });
            span.title = s === null ? "" : (h.backend_states[s] || "");
            record.strip.appendChild(span);
          }
        }
      })
      .catch(function () {});
  }

  function renderPools(data) {
    const parent = document.getElementById("pools");
    const seen = new Set();
    for (const p of data.pools) {
      seen.add(p.name);
      let cells = pools.get(p.name);
      if (!cells) {
        cells = makePool(p);
        pools.set(p.name, cells);
        parent.appendChild(cells.box);
      }
      setText(cells.sub, p.balance + " · used by " + (p.services.length ? p.services.join(", ") : "no service"));
      let up = 0;
      let active = 0;
      for (const b of p.backends) {
        if (b.state === "up") up++;
        active += b.active;
      }
      setText(cells.up, up + " of " + p.backends.length);
      setText(cells.active, num(active));
      setText(cells.rate, num(p.now.sessions_per_s));
      setText(cells.queue, num(p.queue.waiting) + (p.queue.size ? " / " + p.queue.size : ""));
      setText(cells.connect, ms(p.now.connect_p50_ms) + " / " + ms(p.now.connect_p99_ms));
      cells.charts.update(p.history, data.history);
      // Rows by id: made once, updated in place; re-ordered only when the set changes.
      const ids = [];
      for (const b of p.backends) {
        const id = String(b.id);
        ids.push(id);
        let row = cells.rows.get(id);
        if (!row) {
          row = makeRow(b);
          cells.rows.set(id, row);
        }
        updateRow(row, b);
      }
      const order = ids.join(",");
      if (order !== cells.order) {
        cells.order = order;
        const keep = new Set(ids);
        for (const [id, row] of cells.rows) {
          if (!keep.has(id)) {
            row.tr.remove();
            cells.rows.delete(id);
            const detail = open.get(id);
            if (detail) {
              detail.tr.remove();
              open.delete(id);
            }
          }
        }
        const fragment = document.createDocumentFragment();
        for (const id of ids) {
          fragment.appendChild(cells.rows.get(id).tr);
          const detail = open.get(id);
          if (detail) fragment.appendChild(detail.tr);
        }
        cells.tbody.appendChild(fragment);
      }
    }
    for (const [name, cells] of pools) {
      if (!seen.has(name)) {
        cells.box.remove();
        pools.delete(name);
      }
    }
    for (const [id, record] of open) loadDetail(id, record);
  }

  // ---- the loop -----------------------------------------------------------------------

  let lastOk = 0;
  let renders = 0;

  function status(text, stale) {
    const node = document.getElementById("status");
    setText(node, text);
    node.classList.toggle("stale", !!stale);
  }

  function render(data) {
    const started = performance.now();
    renderProcess(data);
    renderServices(data);
    renderPools(data);
    const took = performance.now() - started;
    renders++;
    document.body.dataset.renders = String(renders);
    document.body.dataset.renderMs = took.toFixed(1);
    const max = parseFloat(document.body.dataset.renderMaxMs || "0");
    if (took > max) document.body.dataset.renderMaxMs = took.toFixed(1);
  }

  function poll() {
    fetch("/api/stats", { cache: "no-store" })
      .then(function (r) {
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.json();
      })
      .then(function (data) {
        render(data);
        lastOk = Date.now();
        status("live · updated " + new Date(lastOk).toLocaleTimeString(), false);
      })
      .catch(function (e) {
        const since = lastOk ? " since " + new Date(lastOk).toLocaleTimeString() : "";
        status("cannot reach tcplb" + since + " (" + e.message + ")", true);
      })
      .finally(function () {
        setTimeout(poll, document.hidden ? HIDDEN_POLL_MS : POLL_MS);
      });
  }

  legend();
  poll();
})();
