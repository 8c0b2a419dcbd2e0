"use strict";
// The dashboard's one script (ours): swap the server's HTML fragments pushed over SSE into
// the page by id, and turn the buttons into API calls with the CSRF header.
(() => {
  const csrf = document.querySelector('meta[name="csrf"]').content;
  const msg = document.getElementById("msg");
  const live = document.getElementById("live");
  const LOG_MAX = 65536;

  function swap(html) {
    const t = document.createElement("template");
    t.innerHTML = html;
    for (const el of Array.from(t.content.children)) {
      const old = document.getElementById(el.id);
      const how = el.dataset.swap;
      if (how === "remove") { if (old) old.remove(); continue; }
      if (how === "append") { if (old) appendLog(old, el.textContent); continue; }
      if (!old) {
        const into = el.dataset.into && document.getElementById(el.dataset.into);
        if (into) { delete el.dataset.into; into.append(el); }
        continue;
      }
      // keep the keyboard focus on the same button when its row is replaced
      const focused = old.contains(document.activeElement) && document.activeElement.dataset.action;
      old.replaceWith(el);
      if (focused) { const b = el.querySelector(`[data-action="${focused}"]`); if (b) b.focus(); }
    }
  }

  function appendLog(pre, text) {
    const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.append(text);
    if (pre.textContent.length > LOG_MAX) pre.textContent = pre.textContent.slice(-LOG_MAX / 2);
    if (atEnd) pre.scrollTop = pre.scrollHeight;
  }

  // since: the version this page was rendered at (the stream sends only what came after)
  const since = document.querySelector('meta[name="version"]').content;
  const events = new EventSource(`/ui/events?since=${encodeURIComponent(since)}`);
  // messages that arrive within one frame are swapped in together, once per frame
  let queued = [];
  events.addEventListener("swap", (e) => {
    if (queued.push(e.data) === 1) {
      requestAnimationFrame(() => { const q = queued; queued = []; q.forEach(swap); });
    }
  });
  events.addEventListener("open", () => { live.textContent = "live"; });
  events.addEventListener("error", () => { live.textContent = "reconnecting…"; });

  async function call(method, url, body) {
    const r = await fetch(url, {
      method,
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (r.status === 401) { location.reload(); return null; }
    let doc = {};
    try { doc = await r.json(); } catch (_) { /* an empty answer */ }
    if (!r.ok) throw new Error(doc.detail || doc.error || `${r.status} ${r.statusText}`);
    return doc;
  }

  document.addEventListener("click", async (e) => {
    const b = e.target.closest("button[data-action]");
    if (!b) return;
    const row = b.closest("[data-instance-id]");
    const id = row.dataset.instanceId;
    try {
      if (b.dataset.action === "lease") {
        const d = await call("POST", "/v1/leases", { instance_id: id, wait_s: 0 });
        if (d) msg.textContent = `leased ${id}: lease ${d.lease_id}` + (d.url ? ` at ${d.url}` : "");
      } else if (b.dataset.action === "release") {
        await call("DELETE", `/v1/leases/${encodeURIComponent(row.dataset.leaseId)}`);
        msg.textContent = `released ${id}`;
      } else if (b.dataset.action === "destroy") {
        if (!confirm(`Destroy instance ${id}? Its machine is gone for good.`)) return;
        await call("DELETE", `/v1/instances/${encodeURIComponent(id)}`);
        msg.textContent = `destroying ${id}`;
      }
    } catch (err) {
      msg.textContent = `${b.dataset.action} ${id}: ${err.message}`;
    }
  });
})();
