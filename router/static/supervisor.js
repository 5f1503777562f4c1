// kfrouter supervisor page: renders the snapshots sent on /supervisor/events (server-sent events).
// Every value is inserted with textContent (never innerHTML), so nicknames and openids cannot inject markup.
// Waits and "time since" tick locally every second from the server's clock (snapshot.now).
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  let offset = 0; // server time - local time, seconds
  let lastSnapshot = null;
  let source = null;
  const seenAssignments = new Set();
  let firstRender = true;

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function serverNow() {
    return Date.now() / 1000 + offset;
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "—";
    let s = Math.max(0, Math.round(seconds));
    if (s < 60) return s + "s";
    let m = Math.floor(s / 60);
    s %= 60;
    if (m < 60) return m + "m " + String(s).padStart(2, "0") + "s";
    const h = Math.floor(m / 60);
    m %= 60;
    return h + "h " + String(m).padStart(2, "0") + "m";
  }

  function shortId(openid) {
    return openid.length > 14 ? openid.slice(0, 6) + "…" + openid.slice(-5) : openid;
  }

  function clockTime(t) {
    return new Date((t - offset) * 1000).toLocaleTimeString([], {
      hour: "2-digit",
      minute: "2-digit",
      second: "2-digit",
      hour12: false,
    });
  }

  function waitLevel(seconds) {
    if (seconds >= 300) return "bad";
    if (seconds >= 120) return "warn";
    return "";
  }

  // An element whose text is "time since <since>" (server seconds), updated by tick().
  function since(node, t, suffix, levels, prefix) {
    node.dataset.since = String(t);
    if (suffix) node.dataset.suffix = suffix;
    if (prefix) node.dataset.prefix = prefix;
    if (levels) node.dataset.levels = "1";
    return node;
  }

  function tick() {
    const now = serverNow();
    for (const node of document.querySelectorAll("[data-since]")) {
      const elapsed = now - Number(node.dataset.since);
      node.textContent = (node.dataset.prefix || "") + duration(elapsed) + (node.dataset.suffix || "");
      if (node.dataset.levels) node.dataset.level = waitLevel(elapsed);
    }
  }

  function bar(parts, capacity) {
    const wrap = el("span", "bar");
    const total = parts.reduce((a, p) => a + p.value, 0);
    const ratio = capacity > 0 ? total / capacity : 0;
    wrap.dataset.level = ratio >= 1 ? "full" : ratio >= 0.7 ? "warn" : "";
    for (const p of parts) {
      const seg = el("span", "bar-seg " + (p.cls || ""));
      seg.style.width = capacity > 0 ? Math.min(100, (100 * p.value) / capacity) + "%" : "0%";
      if (p.title) seg.title = p.title;
      wrap.appendChild(seg);
    }
    return wrap;
  }

  // ---------------------------------------------------------------- sections

  function renderTotals(s) {
    const t = s.totals;
    $("account").textContent = s.appid;
    renderAccounts(s);
    $("t-waiting").textContent = t.waiting;
    const longest = $("t-longest");
    delete longest.dataset.since;
    delete longest.dataset.prefix;
    if (t.waiting > 0) {
      since(longest, s.now - t.longest_wait_s, "", false, "longest wait ");
    } else {
      longest.textContent = "nobody waiting";
    }
    $("stat-waiting").dataset.level = t.waiting > 0 ? waitLevel(t.longest_wait_s) : "";
    $("t-online").textContent = t.agents_online;
    $("t-agents").textContent = "/ " + t.agents;
    $("t-free").textContent = t.agents_free + " with free capacity";
    $("t-load").textContent = t.load;
    $("t-capacity").textContent = "/ " + t.capacity;
    const lb = $("t-loadbar");
    lb.style.width = t.capacity > 0 ? Math.min(100, (100 * t.load) / t.capacity) + "%" : "0%";
    const ratio = t.capacity > 0 ? t.load / t.capacity : 0;
    lb.parentElement.dataset.level = ratio >= 1 ? "full" : ratio >= 0.7 ? "warn" : "";
    $("t-sessions").textContent = t.sessions;
    $("t-reservations").textContent =
      t.reservations > 0 ? t.reservations + " being assigned" : t.wechat_waitlist > 0 ? t.wechat_waitlist + " in WeChat's queue" : "\u00a0";
    $("t-assigned").textContent = t.assigned;
  }

  function renderAgents(s) {
    const body = $("agents");
    const rows = [];
    for (const a of s.agents) {
      const tr = el("tr");
      tr.dataset.agent = a.kf_account;
      tr.dataset.status = a.status;

      const who = el("div", "who");
      const name = a.nickname || a.kf_account.split("@")[0];
      who.appendChild(el("span", "avatar", Array.from(name)[0].toUpperCase()));
      const names = el("div");
      names.style.minWidth = "0";
      names.appendChild(el("div", "who-name", name));
      names.appendChild(el("div", "who-account", a.kf_account));
      who.appendChild(names);
      const td1 = el("td");
      td1.appendChild(who);
      tr.appendChild(td1);

      const td2 = el("td");
      const labels = { available: "Available", full: "Full", paused: "Paused", offline: "Offline" };
      td2.appendChild(el("span", "badge badge-" + a.status, labels[a.status] || a.status));
      tr.appendChild(td2);

      const td3 = el("td");
      for (const g of a.groups) td3.appendChild(el("span", "chip", g));
      if (a.groups.length === 0) td3.appendChild(el("span", "muted", "any"));
      tr.appendChild(td3);

      const td4 = el("td");
      const load = el("div", "load");
      load.appendChild(
        bar(
          [
            { value: a.sessions, title: a.sessions + " in session" },
            { value: a.reserved, cls: "bar-reserved", title: a.reserved + " being assigned" },
          ],
          a.capacity
        )
      );
      load.appendChild(el("span", "load-text", a.load + " / " + a.capacity));
      td4.appendChild(load);
      tr.appendChild(td4);

      const td5 = el("td", "last");
      if (a.last_assigned_at === null) td5.appendChild(el("span", "muted", "never"));
      else td5.appendChild(since(el("span"), a.last_assigned_at, " ago"));
      tr.appendChild(td5);

      tr.appendChild(el("td", "num", a.assigned));
      rows.push(tr);
    }
    body.replaceChildren(...rows);
    $("agents-count").textContent = s.totals.agents_online + " online of " + s.totals.agents;
    $("agents-empty").hidden = s.agents.length > 0;
  }

  function renderQueues(s) {
    const box = $("queues");
    const cards = [];
    for (const g of s.groups) {
      const card = el("div", "group");
      card.dataset.group = g.name;
      card.dataset.waiting = g.waiting > 0 ? "yes" : "no";
      const head = el("div", "group-head");
      head.appendChild(el("span", "group-name", g.label));
      head.appendChild(el("span", "group-count", g.waiting));
      const meta =
        g.agents_online + (g.agents_online === 1 ? " agent" : " agents") + " online · " +
        g.free_slots + (g.free_slots === 1 ? " free slot" : " free slots");
      head.appendChild(el("span", "group-meta", meta));
      card.appendChild(head);
      if (g.waiting === 0) {
        card.appendChild(el("div", "group-empty", "Nobody waiting"));
      } else {
        const list = el("ol", "customers");
        for (const c of g.customers) {
          const li = el("li");
          li.dataset.openid = c.openid;
          li.appendChild(el("span", "pos", "#" + (c.position + 1)));
          const cust = el("span", "cust", shortId(c.openid));
          cust.title = c.openid;
          if (c.priority > 0) cust.appendChild(el("span", "tag", "P" + c.priority));
          if (c.preferred_agent) cust.appendChild(el("span", "tag", "→ " + c.preferred_agent.split("@")[0]));
          li.appendChild(cust);
          const waited = since(el("span", "waited"), c.arrived_at, "", true);
          waited.title = "waiting since " + clockTime(c.arrived_at);
          li.appendChild(waited);
          const eta = el("span", "eta");
          if (c.estimate && c.estimate.seconds !== null) {
            eta.textContent = c.estimate.seconds < 1 ? "next" : "~" + duration(c.estimate.seconds) + " left";
            eta.title = "estimate (" + c.estimate.method + "), " + c.estimate.ahead + " ahead";
          } else if (g.agents_online === 0) {
            eta.textContent = "no agent online";
            eta.title = "nobody who serves this group is online";
          } else {
            eta.textContent = "no estimate";
          }
          li.appendChild(eta);
          list.appendChild(li);
        }
        card.appendChild(list);
        if (g.waiting > g.customers.length) {
          card.appendChild(el("div", "more", "+ " + (g.waiting - g.customers.length) + " more waiting"));
        }
      }
      cards.push(card);
    }
    box.replaceChildren(...cards);
  }

  function renderRecent(s) {
    const list = $("recent");
    const items = [];
    for (const r of s.recent) {
      const key = r.at + "|" + r.openid;
      const li = el("li");
      li.dataset.openid = r.openid;
      li.dataset.agent = r.kf_account;
      if (!seenAssignments.has(key)) {
        seenAssignments.add(key);
        if (!firstRender) li.className = "new";
      }
      li.appendChild(el("span", "feed-time", clockTime(r.at)));
      const main = el("span", "feed-main");
      const cust = el("span", "cust", shortId(r.openid));
      cust.title = r.openid;
      main.appendChild(cust);
      main.appendChild(el("span", "arrow", "→"));
      const agent = el("span", "agent", r.nickname || r.kf_account);
      agent.title = r.kf_account;
      main.appendChild(agent);
      if (r.group) {
        main.appendChild(document.createTextNode(" "));
        main.appendChild(el("span", "chip", r.group));
      }
      if (r.source === "push") main.appendChild(el("span", "tag", "taken in WeChat"));
      li.appendChild(main);
      li.appendChild(el("span", "feed-wait", r.waited_s === null ? "" : "waited " + duration(r.waited_s)));
      items.push(li);
    }
    list.replaceChildren(...items);
    $("recent-empty").hidden = s.recent.length > 0;
  }

  function renderSessions(s) {
    const body = $("sessions");
    const rows = [];
    for (const x of s.sessions) {
      const tr = el("tr");
      tr.dataset.openid = x.openid;
      tr.dataset.agent = x.kf_account;
      const cust = el("td", "cust", shortId(x.openid));
      cust.title = x.openid;
      tr.appendChild(cust);
      const who = el("td");
      who.appendChild(el("span", "agent", x.nickname || x.kf_account));
      who.title = x.kf_account;
      tr.appendChild(who);
      const td = el("td");
      if (x.started_at === null) td.appendChild(el("span", "muted", "—"));
      else td.appendChild(since(el("span"), x.started_at, ""));
      tr.appendChild(td);
      rows.push(tr);
    }
    body.replaceChildren(...rows);
    const total = s.totals.sessions;
    $("sessions-count").textContent = total ? String(total) : "";
    $("sessions-empty").hidden = total > 0;
    const more = $("sessions-more");
    more.hidden = total <= s.sessions.length;
    more.textContent = "+ " + (total - s.sessions.length) + " more (the longest are listed)";
  }

  function render(s) {
    lastSnapshot = s;
    renderTotals(s);
    renderAgents(s);
    renderQueues(s);
    renderRecent(s);
    renderSessions(s);
    document.dispatchEvent(new CustomEvent("kfrouter:rendered", { detail: s }));
    firstRender = false;
    $("status").textContent = s.status;
    $("updated").textContent = new Date().toLocaleTimeString([], { hour12: false });
    document.body.dataset.ready = "1";
    tick();
  }

  // ---------------------------------------------------------------- the stream

  function setLive(state, text) {
    $("live").dataset.state = state;
    $("live-text").textContent = text;
  }

  // The account shown: ?account=APPID (a daemon of several accounts); the server's first one otherwise.
  const chosen = new URLSearchParams(window.location.search).get("account");
  function withAccount(path) {
    if (!chosen) return path;
    return path + (path.indexOf("?") < 0 ? "?" : "&") + "account=" + encodeURIComponent(chosen);
  }

  function renderAccounts(s) {
    const box = $("account-select");
    const list = s.accounts || [];
    box.hidden = list.length < 2;
    if (box.hidden) return;
    const wanted = list.map((a) => a.appid + "|" + a.status + "|" + a.waiting).join(",");
    if (box.dataset.list !== wanted) {
      box.dataset.list = wanted;
      box.textContent = "";
      for (const a of list) {
        const label = a.appid + (a.running ? " — " + a.waiting + " waiting" : " — " + a.status);
        const opt = el("option", "", label);
        opt.value = a.appid;
        opt.disabled = !a.running;
        box.appendChild(opt);
      }
    }
    box.value = s.appid;
  }

  function connect() {
    if (source) source.close();
    source = new EventSource(withAccount("/supervisor/events"));
    source.addEventListener("snapshot", (event) => {
      const s = JSON.parse(event.data);
      offset = s.now - Date.now() / 1000;
      render(s);
      setLive("live", "Live");
    });
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) {
        // Refused (logged out, token changed) or the server is gone: find out which.
        fetch(withAccount("/supervisor/state"), { credentials: "same-origin" })
          .then((r) => {
            if (r.status === 401) {
              setLive("down", "Logged out — reload to log in");
            } else {
              setLive("reconnecting", "Reconnecting…");
              setTimeout(connect, 3000);
            }
          })
          .catch(() => {
            setLive("down", "kfrouter unreachable — retrying");
            setTimeout(connect, 5000);
          });
      } else {
        setLive("reconnecting", "Reconnecting…");
      }
    };
  }

  // ---------------------------------------------------------------- history (SVG images drawn by kfrouter)

  function loadHistory() {
    const stamp = String(Date.now());
    for (const img of document.querySelectorAll("#history img[data-chart]")) {
      img.src = withAccount("/supervisor/history/" + img.dataset.chart + ".svg?t=" + stamp);
    }
  }

  function watchHistory() {
    for (const img of document.querySelectorAll("#history img[data-chart]")) {
      img.addEventListener("load", () => {
        img.dataset.loaded = "1";
        $("history-error").hidden = true;
      });
      img.addEventListener("error", () => {
        img.dataset.loaded = "0";
        const box = $("history-error");
        box.hidden = false;
        box.textContent = "History unavailable (no database, or logged out).";
      });
    }
    loadHistory();
    setInterval(loadHistory, 60000);
  }

  document.addEventListener("DOMContentLoaded", () => {
    const role = document.querySelector('meta[name="kfrouter-role"]');
    if (role && role.content !== "admin") $("role").hidden = false;
    $("account-select").addEventListener("change", (event) => {
      const params = new URLSearchParams(window.location.search);
      params.set("account", event.target.value);
      window.location.search = params.toString();
    });
    connect();
    watchHistory();
    setInterval(tick, 1000);
  });

  window.kfrouterSupervisor = { snapshot: () => lastSnapshot, shortId: shortId, loadHistory: loadHistory };
})();
