// The RetrySpool dashboard: refreshes the counts and the age
// table, pages through a state, shows one message and, when the server
// allows actions, runs them after a dry run and a confirmation.
"use strict";

(function () {
  const body = document.body;
  const refreshMS = Number(body.dataset.refresh) || 5000;
  const actions = body.dataset.actions === "true";
  const token = body.dataset.token || "";
  const STATES = ["incoming", "active", "deferred", "hold", "bounce", "archived"];
  const COLORS = {
    incoming: "#3b82f6", active: "#10b981", deferred: "#f59e0b",
    hold: "#8b5cf6", bounce: "#ef4444", archived: "#94a3b8",
  };
  const $ = (sel) => document.querySelector(sel);
  const fmt = (n) => Number(n).toLocaleString("en-US");

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v;
      else if (k.startsWith("data-")) e.setAttribute(k, v);
      else e[k] = v;
    }
    for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return e;
  }

  function age(seconds, count) {
    if (!count) return "-";
    const s = Math.floor(seconds);
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m";
    if (s < 48 * 3600) return Math.floor(s / 3600) + "h" + String(Math.floor(s / 60) % 60).padStart(2, "0") + "m";
    return Math.floor(s / 86400) + "d" + (Math.floor(s / 3600) % 24) + "h";
  }

  function when(iso) {
    if (!iso) return "-";
    const d = new Date(iso);
    return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
  }

  async function api(path, opts) {
    const res = await fetch(path, Object.assign({ headers: { Accept: "application/json" } }, opts));
    const data = await res.json().catch(() => ({ error: res.status + " " + res.statusText }));
    if (!res.ok) throw Object.assign(new Error(data.error || res.statusText), { status: res.status });
    return data;
  }

  // ---- counts and ages, refreshed live
  function showStats(st) {
    for (const s of st.states) {
      const card = document.querySelector('.card[data-state="' + s.state + '"]');
      if (!card) continue;
      const c = card.querySelector(".count");
      c.dataset.count = s.count;
      c.textContent = fmt(s.count);
      card.querySelector(".age").textContent = age(s.oldest_age_seconds, s.count);
      card.title = s.count ? "oldest: " + s.oldest_id + " (" + when(s.oldest_created) + ")" : "empty";
    }
    $("#total").dataset.count = st.total;
    $("#total").textContent = fmt(st.total);
    $("#due").dataset.count = st.due.count;
    $("#due").textContent = fmt(st.due.count) + (st.due.at_least ? "+" : "");
    $("#updated").textContent = "as of " + new Date(st.now).toLocaleTimeString();
  }

  function showShape(sh) {
    const rows = $("#shape-body");
    rows.replaceChildren(...sh.states.map((s) => {
      const max = Math.max(1, ...s.counts);
      const tr = el("tr", { "data-state": s.state },
        el("th", { class: "l" }, el("i", { class: "sw st-" + s.state }), s.state),
        el("td", { class: "t" }, fmt(s.total)));
      for (const n of s.counts) {
        const td = el("td", {}, fmt(n));
        if (n > 0) {
          td.classList.add("hot");
          td.style.setProperty("--heat", (0.12 + 0.5 * n / max).toFixed(2));
          td.style.setProperty("--c", COLORS[s.state]);
        }
        tr.append(td);
      }
      return tr;
    }));
    $("#shape-foot").replaceChildren(el("tr", {}, el("th", { class: "l" }, "total"),
      el("td", { class: "t" }, fmt(sh.total)), ...sh.totals.map((n) => el("td", {}, fmt(n)))));
    drawChart(sh);
  }

  // A stacked bar per age bucket, one colour per state.
  function drawChart(sh) {
    const svg = $("#shape-chart");
    const ns = "http://www.w3.org/2000/svg";
    const W = 560, H = 220, left = 44, bottom = 24, top = 8;
    const mk = (tag, attrs, text) => {
      const e = document.createElementNS(ns, tag);
      for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
      if (text !== undefined) e.textContent = text;
      return e;
    };
    const totals = sh.totals;
    const max = Math.max(1, ...totals);
    const step = niceStep(max);
    const ymax = Math.ceil(max / step) * step;
    const plotH = H - bottom - top;
    const bw = (W - left - 8) / totals.length;
    const parts = [];
    for (let v = 0; v <= ymax; v += step) {
      const y = top + plotH - (v / ymax) * plotH;
      parts.push(mk("line", { x1: left, x2: W - 4, y1: y, y2: y, class: "grid" }));
      parts.push(mk("text", { x: left - 6, y: y + 4, class: "axis", "text-anchor": "end" }, short(v)));
    }
    sh.buckets.forEach((label, i) => {
      let y = top + plotH;
      const x = left + i * bw + bw * 0.15;
      for (const s of sh.states) {
        const n = s.counts[i];
        if (!n) continue;
        const h = (n / ymax) * plotH;
        y -= h;
        const r = mk("rect", { x: x, y: y, width: bw * 0.7, height: Math.max(h, 0.5), fill: COLORS[s.state], rx: 2 });
        r.append(mk("title", {}, s.state + ", " + label + ": " + fmt(n)));
        parts.push(r);
      }
      parts.push(mk("text", { x: x + bw * 0.35, y: H - 6, class: "axis", "text-anchor": "middle" }, label));
    });
    svg.replaceChildren(...parts);
    $("#legend").replaceChildren(...sh.states.filter((s) => s.total > 0).map((s) =>
      el("span", {}, el("i", { class: "sw st-" + s.state }), s.state)));
  }

  function niceStep(max) {
    const raw = max / 4;
    const p = Math.pow(10, Math.floor(Math.log10(raw)));
    for (const m of [1, 2, 2.5, 5, 10]) if (raw <= m * p) return Math.max(1, m * p);
    return Math.max(1, 10 * p);
  }

  function short(v) {
    if (v >= 1e6) return (v / 1e6) + "M";
    if (v >= 1e3) return (v / 1e3) + "k";
    return String(v);
  }

  let refreshing = false;
  async function refresh() {
    if (refreshing) return;
    refreshing = true;
    try {
      const [st, sh] = await Promise.all([api("api/stats"), api("api/shape")]);
      showStats(st);
      showShape(sh);
      $("#live").classList.remove("stale");
    } catch (e) {
      $("#live").classList.add("stale");
      $("#updated").textContent = "not updated: " + e.message;
    } finally {
      refreshing = false;
    }
  }

  // ---- a state's messages, page by page
  const list = { state: "", offset: 0, total: 0 };

  async function showList() {
    if (!list.state) return;
    const limit = Number($("#limit").value);
    const q = new URLSearchParams({ state: list.state, sort: $("#sort").value, order: $("#order").value, limit: limit, offset: list.offset });
    document.querySelectorAll("#tabs button").forEach((b) => b.classList.toggle("on", b.dataset.state === list.state));
    document.querySelectorAll(".messages th[data-sort]").forEach((th) => {
      th.classList.toggle("sorted", th.dataset.sort === $("#sort").value);
      th.dataset.order = $("#order").value;
    });
    let page;
    try {
      page = await api("api/messages?" + q);
    } catch (e) {
      $("#rows").replaceChildren(el("tr", {}, el("td", { colSpan: 7, class: "empty" }, e.message)));
      return;
    }
    list.total = page.total;
    $("#list-title").textContent = list.state + ", by " + page.sort + " " + (page.order === "asc" ? "ascending" : "descending");
    if (page.messages.length === 0) {
      $("#rows").replaceChildren(el("tr", {}, el("td", { colSpan: 7, class: "empty" }, "no " + list.state + " messages")));
    } else {
      $("#rows").replaceChildren(...page.messages.map((m) => {
        const link = el("a", { href: "#detail", class: "id", "data-id": m.id }, m.id);
        link.addEventListener("click", (ev) => { ev.preventDefault(); showMessage(m.id); });
        return el("tr", { "data-id": m.id },
          el("td", {}, link), el("td", {}, when(m.created)), el("td", {}, when(m.updated)),
          el("td", { class: "n" }, m.attempts + "/" + m.max_attempts), el("td", { class: "n" }, m.priority),
          el("td", {}, when(m.next_retry)), el("td", { class: "err", title: m.last_error }, m.last_error || "-"));
      }));
    }
    const from = page.messages.length ? page.offset + 1 : 0;
    $("#range").textContent = from + "–" + (page.offset + page.messages.length) + " of " + fmt(page.total);
    $("#range").dataset.offset = page.offset;
    $("#prev").disabled = page.offset === 0;
    $("#next").disabled = !page.has_more;
  }

  function pickState(state) {
    list.state = state;
    list.offset = 0;
    showList();
  }

  // ---- one message
  async function showMessage(id) {
    let m;
    try {
      m = await api("api/message?" + new URLSearchParams({ id: id }));
    } catch (e) {
      $("#detail-body").replaceChildren(el("p", { class: "empty" }, e.message));
      $("#detail").hidden = false;
      return;
    }
    $("#detail-id").textContent = m.id;
    document.querySelectorAll("#rows tr").forEach((tr) => tr.classList.toggle("sel", tr.dataset.id === m.id));
    const row = (k, v) => el("tr", {}, el("th", {}, k), el("td", {}, v));
    const fields = el("table", { class: "kv" },
      row("state", el("span", { class: "pill st-" + m.state }, m.state)),
      row("attempts", m.attempts + " of " + m.max_attempts),
      row("next retry", when(m.next_retry)),
      row("created", when(m.created)),
      row("updated", when(m.updated)),
      row("size", fmt(m.size) + " bytes"),
      row("priority", m.priority),
      row("retry policy", m.retry_policy_name || "-"));
    const keys = Object.keys(m.headers || {}).sort();
    const headers = keys.length
      ? el("table", { class: "kv headers" }, ...keys.map((k) => row(k, m.headers[k])))
      : el("p", { class: "empty" }, "no headers");
    const parts = [el("div", { class: "detail-grid" },
      el("div", {}, el("h3", {}, "record"), fields),
      el("div", {}, el("h3", {}, "headers"), headers)),
      el("h3", {}, "last error"), el("pre", { class: m.last_error ? "lasterror" : "lasterror none" }, m.last_error || "none")];
    if (actions) {
      const b = el("button", { type: "button", id: "act-move" }, "Move to another state…");
      b.addEventListener("click", () => openMove(m));
      parts.push(el("div", { class: "action-row" }, b));
    }
    $("#detail-body").replaceChildren(...parts);
    $("#detail").hidden = false;
    $("#detail").scrollIntoView({ behavior: "smooth", block: "nearest" });
  }

  // ---- actions: a dry run, then a confirmation
  let pending = null; // {name, body()}

  function field(label, input) {
    return el("label", {}, el("span", {}, label), input);
  }

  function stateSelect(id, selected, except) {
    const s = el("select", { id: id });
    for (const st of STATES) {
      if (st === except) continue;
      const o = el("option", { value: st }, st);
      if (st === selected) o.selected = true;
      s.append(o);
    }
    return s;
  }

  function openDialog(title, fields, name, body, verb) {
    const d = $("#confirm");
    $("#confirm-title").textContent = title;
    $("#confirm-fields").replaceChildren(...fields);
    $("#confirm-result").textContent = "Run a dry run first: it shows what would change.";
    $("#confirm-result").className = "result";
    const go = $("#confirm-go");
    go.disabled = true;
    go.textContent = verb;
    pending = { name: name, body: body, verb: verb };
    // Changing a field asks for a new dry run.
    for (const f of fields) f.addEventListener("input", () => { go.disabled = true; });
    $("#confirm-cancel").textContent = "Cancel";
    d.showModal();
  }

  async function runAction(dry) {
    const p = pending;
    if (!p) return;
    const out = $("#confirm-result");
    try {
      const res = await api("api/actions/" + p.name, {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json", "X-Dashboard-Token": token },
        body: JSON.stringify(Object.assign(p.body(), { dry_run: dry })),
      });
      out.className = "result " + (dry ? "dry" : "done");
      out.textContent = res.message;
      if (dry) {
        $("#confirm-go").disabled = res.count === 0;
        $("#confirm-go").textContent = p.verb + " (" + fmt(res.count) + ")";
      } else {
        $("#confirm-go").disabled = true;
        $("#confirm-cancel").textContent = "Close";
        refresh();
        showList();
      }
    } catch (e) {
      out.className = "result error";
      out.textContent = e.message;
      $("#confirm-go").disabled = true;
    }
  }

  function openMove(m) {
    const to = stateSelect("f-to", m.state === "incoming" ? "hold" : "incoming", m.state);
    openDialog("Move " + m.id, [field("from", el("input", { value: m.state, readOnly: true })), field("to", to)],
      "move", () => ({ id: m.id, from: m.state, to: to.value }), "Move");
  }

  function openRequeue() {
    const older = el("input", { id: "f-older", value: "15m", placeholder: "15m, 2h, 7d" });
    openDialog("Requeue stale active messages", [field("claimed more than … ago", older)],
      "requeue-stale", () => ({ older_than: older.value }), "Requeue");
  }

  function openPurge() {
    const st = stateSelect("f-state", "archived");
    const older = el("input", { id: "f-older", value: "720h", placeholder: "720h, 30d" });
    const archive = el("input", { id: "f-archive", type: "checkbox" });
    openDialog("Purge old messages", [field("state", st), field("created more than … ago", older), field("archive instead of delete", archive)],
      "purge", () => ({ state: st.value, older_than: older.value, archive: archive.checked }), "Purge");
  }

  // ---- wiring
  document.querySelectorAll(".card[data-state]").forEach((c) =>
    c.addEventListener("click", () => { pickState(c.dataset.state); $("#list").scrollIntoView({ behavior: "smooth" }); }));
  document.querySelectorAll("#tabs button").forEach((b) => b.addEventListener("click", () => pickState(b.dataset.state)));
  for (const id of ["#sort", "#order", "#limit"]) $(id).addEventListener("change", () => { list.offset = 0; showList(); });
  document.querySelectorAll(".messages th[data-sort]").forEach((th) => th.addEventListener("click", () => {
    if ($("#sort").value === th.dataset.sort) $("#order").value = $("#order").value === "asc" ? "desc" : "asc";
    else $("#sort").value = th.dataset.sort;
    list.offset = 0;
    showList();
  }));
  $("#prev").addEventListener("click", () => { list.offset = Math.max(0, list.offset - Number($("#limit").value)); showList(); });
  $("#next").addEventListener("click", () => { list.offset += Number($("#limit").value); showList(); });
  $("#detail-close").addEventListener("click", () => { $("#detail").hidden = true; });
  if (actions) {
    $("#act-requeue").addEventListener("click", openRequeue);
    $("#act-purge").addEventListener("click", openPurge);
    $("#confirm-dry").addEventListener("click", () => runAction(true));
    $("#confirm-go").addEventListener("click", () => runAction(false));
  }

  const first = STATES.find((s) => Number(document.querySelector('.card[data-state="' + s + '"] .count').dataset.count) > 0);
  pickState(first || "incoming");
  refresh();
  setInterval(() => { if (!document.hidden) refresh(); }, refreshMS);
})();
