// The console's live updates: one EventSource on the page's own stream (the browser sends
// the cookie; no key in any URL). Each event has an id, so a dropped stream resumes with
// Last-Event-ID where it stopped. Tenant text is inserted as text, never as markup.
(() => {
  "use strict";
  const src = document.body.dataset.live;
  const live = document.getElementById("live");
  const $ = sel => document.querySelector(sel);
  const byId = (prefix, id) => document.getElementById(prefix + id);

  function setState(cell, value, extra) {
    cell.textContent = value + (extra || "");
    cell.className = (cell.tagName === "TD" ? "state " : "state ") + "s-" + value;
  }
  function setProgress(row, p) {
    const pct = Math.round(100 * (p || 0));
    const bar = row.querySelector(".bar span"); if (bar) bar.style.width = pct + "%";
    const txt = row.querySelector(".pct"); if (txt) txt.textContent = pct + "%";
  }
  function cell(text, href) {
    const td = document.createElement("td");
    if (href) { const a = document.createElement("a"); a.href = href; a.textContent = text; td.append(a); }
    else td.textContent = text;
    return td;
  }
  function newTaskRow(org, t) {
    const tr = document.createElement("tr"); tr.id = "task-" + t.id; tr.dataset.task = t.id;
    const runsOn = t.assignedAgent || t.agent || "";
    tr.append(cell(t.id, `/orgs/${encodeURIComponent(org)}/tasks/${encodeURIComponent(t.id)}`),
      cell(t.role || ""), cell(runsOn, runsOn ? `/orgs/${encodeURIComponent(org)}/agents/${encodeURIComponent(runsOn)}` : null),
      cell(t.priority));
    const st = cell(""); st.className = "state"; tr.append(st);
    const pr = document.createElement("td");
    pr.innerHTML = '<div class="bar"><span style="width:0%"></span></div><small class="pct">0%</small>';
    tr.append(pr, cell(t.createdAt ? t.createdAt.slice(0, 19).replace("T", " ") : ""));
    return tr;
  }
  function onTask(ev) {
    const t = ev.task;
    let row = byId("task-", t.id);
    const section = $("section.org");
    if (!row && section && section.dataset.fresh && section.dataset.org === ev.org) {
      row = newTaskRow(ev.org, t);
      $("#tasks tbody").prepend(row);
    }
    if (!row && t.parent) {  // a child of the task this page shows
      const page = $("section.task");
      if (page && page.dataset.task === t.parent) { row = newTaskRow(ev.org, t); $("#children tbody").append(row); }
    }
    if (row) { setState(row.querySelector(".state"), t.state); setProgress(row, t.progress); }
    const page = $("section.task");
    if (page && page.dataset.task === t.id) {
      setState($("#task-state .state"), t.state);
      $("#task-progress").textContent = Math.round(100 * (t.progress || 0)) + "%";
      $("#attempts").textContent = t.attempts;
      const tr = document.createElement("tr");
      tr.append(cell((ev.at || "").slice(0, 19).replace("T", " ")), cell(""));
      const st = cell(""); setState(st, t.state); tr.append(st, cell("live"), cell(""));
      $("#history tbody").append(tr);
      if (["completed", "blocked", "failed", "cancelled", "expired"].includes(t.state)) {
        const cancel = $("#cancel"); if (cancel) cancel.closest("form").remove();
      }
    }
  }
  function onProgress(ev) {
    const row = byId("task-", ev.task); if (row) setProgress(row, ev.progress);
    const page = $("section.task");
    if (page && page.dataset.task === ev.task) $("#task-progress").textContent = Math.round(100 * (ev.progress || 0)) + "%";
  }
  function onAgent(ev) {
    const a = ev.agent;
    const row = byId("agent-", a.id);
    if (row) setState(row.querySelector(".state"), a.state, a.currentTask ? " · busy" : "");
    const page = $("section.agent");
    if (page && page.dataset.agent === a.id) {
      setState($("#agent-state .state"), a.state);
      $("#restarts").textContent = a.restarts;
      const rows = document.querySelectorAll("#agent-history tbody tr");
      const last = rows.length ? rows[rows.length - 1].querySelector(".state") : null;
      if (!last || last.textContent !== a.state) {  // a new state, not a heartbeat's news
        const tr = document.createElement("tr");
        tr.append(cell((ev.at || "").slice(0, 19).replace("T", " ")));
        const st = cell(""); setState(st, a.state); tr.append(st, cell("live"), cell(a.detail || ""));
        $("#agent-history tbody").append(tr);
      }
    }
  }
  // the admin's list of orgs: each event of an org on the page refreshes its row (at most
  // once a second per org); orgs created within the page's stretch of names join it in
  // name order, deleted ones leave it
  const orgs = $("#orgs");
  const pending = new Map();
  function orgCells(tr, f) {
    tr.querySelector(".plan").textContent = f.plan;
    tr.querySelector(".namespace").textContent = f.namespace;
    tr.querySelector(".agents").textContent = f.agents + " / " + f.agentLimit;
    tr.querySelector(".queued").textContent = f.queued;
  }
  async function refreshOrg(org) {
    try {
      const r = await fetch(`/orgs/${encodeURIComponent(org)}/figures`, { credentials: "same-origin", cache: "no-store" });
      const row = byId("org-", org);
      if (r.ok && row) orgCells(row, await r.json());
    } catch (e) { /* the next event tries again */ }
  }
  function scheduleOrg(org) {
    if (pending.has(org)) return;
    pending.set(org, setTimeout(() => { pending.delete(org); refreshOrg(org); }, 1000));
  }
  function inStretch(org) {
    const after = orgs.dataset.after || "";
    if (org <= after) return false;
    const rows = orgs.querySelectorAll("tbody tr");
    return !orgs.dataset.more || (rows.length > 0 && org < rows[rows.length - 1].dataset.org);
  }
  function addOrg(org) {
    const tr = document.createElement("tr"); tr.id = "org-" + org; tr.dataset.org = org;
    tr.append(cell(org, `/orgs/${encodeURIComponent(org)}`));
    for (const name of ["plan", "namespace", "agents", "queued"]) { const td = cell(""); td.className = name; tr.append(td); }
    const before = Array.from(orgs.querySelectorAll("tbody tr")).find(r => r.dataset.org > org);
    orgs.querySelector("tbody").insertBefore(tr, before || null);
    const empty = $("#no-orgs"); if (empty) empty.remove();
    return tr;
  }
  function onOrgEvent(ev) {
    if (!orgs || !ev.org) return;
    let row = byId("org-", ev.org);
    if (ev.kind === "org" && ev.change === "deleted") { if (row) row.remove(); return; }
    if (!row && ev.kind === "org" && ev.change === "created" && inStretch(ev.org)) {
      row = addOrg(ev.org);
      orgCells(row, { plan: ev.plan, namespace: ev.namespace, agents: 0, agentLimit: ev.agentLimit, queued: 0 });
    }
    if (row) scheduleOrg(ev.org);
  }
  if (src) {
    const es = new EventSource(src);
    if (orgs) for (const kind of ["task", "agent", "org"]) es.addEventListener(kind, e => onOrgEvent(JSON.parse(e.data)));
    es.onopen = () => { live.textContent = "● live"; };
    es.onerror = () => { live.textContent = "○ reconnecting"; };
    es.addEventListener("task", e => onTask(JSON.parse(e.data)));
    es.addEventListener("progress", e => onProgress(JSON.parse(e.data)));
    es.addEventListener("agent", e => onAgent(JSON.parse(e.data)));
  }
  const log = $("#log");
  if (log) {
    const state = $("#log-state");
    async function poll() {
      try {
        const r = await fetch(log.dataset.src, { credentials: "same-origin", cache: "no-store" });
        if (r.ok) {
          const body = await r.json();
          const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
          if (log.textContent !== body.log) { log.textContent = body.log; if (atEnd) log.scrollTop = log.scrollHeight; }
          state.textContent = "live";
        } else state.textContent = "unavailable (" + r.status + ")";
      } catch (e) { state.textContent = "unreachable"; }
      setTimeout(poll, 2000);
    }
    poll();
  }
})();
