// kfrouter supervisor page, actions: pause / resume an agent, change its groups and max sessions, close or
// reassign a session, remove a waiting customer. Each goes through the admin API (/api/...), after a
// confirmation dialog, and the result — or WeChat's refusal, in words — is shown in a notice.
// Only for admins: the page carries the role and the session's CSRF token in <meta> tags; a read-only
// viewer's page has no buttons (and the server refuses its changes anyway, 403).
// Every value is inserted with textContent; buttons are added after each render of supervisor.js.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const meta = (name) => {
    const m = document.querySelector('meta[name="' + name + '"]');
    return m ? m.content : "";
  };
  const role = meta("kfrouter-role");
  const csrf = meta("kfrouter-csrf");
  const canAct = role === "admin" && csrf !== "";
  let snapshot = null;
  let pending = null; // the confirmed action: async () => text
  let onChange = null; // refreshes the dialog's summary
  let hideTimer = null;

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  const shortId = (openid) => window.kfrouterSupervisor.shortId(openid);
  const enc = encodeURIComponent;

  function agentName(kf) {
    const a = snapshot && snapshot.agents.find((x) => x.kf_account === kf);
    return a && a.nickname ? a.nickname + " (" + kf + ")" : kf;
  }

  // ---------------------------------------------------------------- the API

  // A daemon of several accounts: the actions go to the shown account's routes (/api/accounts/APPID/...).
  function accountPath(path) {
    const s = snapshot;
    if (!s || !s.accounts || s.accounts.length < 2 || path.indexOf("/api/") !== 0) return path;
    return "/api/accounts/" + enc(s.appid) + path.slice(4);
  }

  async function api(method, path, body) {
    let resp;
    try {
      resp = await fetch(accountPath(path), {
        method: method,
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      throw new Error("kfrouter could not be reached (" + err.message + ").");
    }
    let data = {};
    try {
      data = await resp.json();
    } catch (err) {
      data = {};
    }
    if (!resp.ok) {
      let text = data.error || "HTTP " + resp.status;
      if (resp.status === 401) text = "Your session has ended: reload the page and log in again.";
      if (data.explanation) text += " — " + data.explanation;
      throw new Error(text);
    }
    return { status: resp.status, data: data };
  }

  // ---------------------------------------------------------------- notice and dialog

  function notify(kind, text) {
    const box = $("notice");
    box.dataset.kind = kind;
    $("notice-text").textContent = text;
    box.hidden = false;
    clearTimeout(hideTimer);
    if (kind === "ok") hideTimer = setTimeout(() => (box.hidden = true), 12000);
  }

  function ask(opts) {
    $("action-title").textContent = opts.title;
    $("action-text").textContent = opts.text || "";
    $("action-fields").replaceChildren(...(opts.fields || []));
    const confirm = $("action-confirm");
    confirm.textContent = opts.confirm || "Confirm";
    confirm.className = opts.danger ? "danger" : "";
    confirm.dataset.action = opts.action;
    onChange = opts.summary || null;
    $("action-summary").textContent = onChange ? onChange() : "";
    pending = opts.run;
    $("action-dialog").showModal();
  }

  async function perform(run) {
    notify("pending", "Working…");
    try {
      notify("ok", await run());
    } catch (err) {
      notify("error", err.message);
    }
  }

  // ---------------------------------------------------------------- the actions

  function askPause(a) {
    const name = agentName(a.kf_account);
    const path = "/api/agents/" + enc(a.kf_account) + "/settings";
    if (a.paused) {
      ask({
        action: "resume",
        title: "Resume " + name + "?",
        text: "kfrouter assigns customers to this agent again.",
        confirm: "Resume",
        run: async () => {
          await api("PATCH", path, { paused: false });
          return "Resumed " + name + ": kfrouter assigns customers to them again.";
        },
      });
      return;
    }
    ask({
      action: "pause",
      title: "Pause " + name + "?",
      text: "kfrouter assigns no new customer to this agent until resumed. Open sessions go on.",
      confirm: "Pause",
      danger: true,
      run: async () => {
        await api("PATCH", path, { paused: true });
        return "Paused " + name + ": no new customers until resumed.";
      },
    });
  }

  function askEdit(a) {
    const name = agentName(a.kf_account);
    const groupsBox = el("div");
    groupsBox.appendChild(el("label", null, "Groups (none ticked: any group)"));
    const checks = el("div", "checks");
    for (const g of snapshot.config_groups) {
      const label = el("label");
      const box = document.createElement("input");
      box.type = "checkbox";
      box.name = "group";
      box.value = g;
      box.checked = a.groups.includes(g);
      box.addEventListener("change", refresh);
      label.appendChild(box);
      label.appendChild(document.createTextNode(g));
      checks.appendChild(label);
    }
    groupsBox.appendChild(checks);
    const maxBox = el("div");
    const maxLabel = el("label", null, "Max sessions (empty: WeChat's setting or the default)");
    maxLabel.htmlFor = "action-max";
    const max = document.createElement("input");
    max.type = "number";
    max.id = "action-max";
    max.min = "1";
    max.max = "1000";
    max.value = String(a.capacity);
    max.addEventListener("input", refresh);
    maxBox.appendChild(maxLabel);
    maxBox.appendChild(max);

    const chosen = () => [...checks.querySelectorAll("input:checked")].map((c) => c.value);
    const limit = () => (max.value.trim() === "" ? null : Number(max.value));
    function refresh() {
      $("action-summary").textContent = summary();
    }
    function summary() {
      const g = chosen();
      const n = limit();
      return (
        name + " will serve " + (g.length ? g.join(", ") : "any group") + ", " +
        (n === null ? "with the default number of sessions." : "at most " + n + " session" + (n === 1 ? "" : "s") + " at a time.")
      );
    }
    ask({
      action: "edit",
      title: "Change " + name + "?",
      fields: [groupsBox, maxBox],
      summary: summary,
      confirm: "Save",
      run: async () => {
        const n = limit();
        if (n !== null && !(Number.isInteger(n) && n >= 1 && n <= 1000)) {
          throw new Error("Max sessions must be a whole number from 1 to 1000, or empty.");
        }
        const r = await api("PATCH", "/api/agents/" + enc(a.kf_account) + "/settings", {
          groups: chosen(),
          max_sessions: n,
        });
        const g = r.data.groups || [];
        return name + " now serves " + (g.length ? g.join(", ") : "any group") + ", at most " + r.data.capacity + " at a time.";
      },
    });
  }

  function askClose(x) {
    const who = shortId(x.openid);
    const name = agentName(x.kf_account);
    ask({
      action: "close",
      title: "Close this session?",
      text: "The session of customer " + who + " with " + name + " ends now (kfsession/close).",
      confirm: "Close session",
      danger: true,
      run: async () => {
        await api("POST", "/api/sessions/" + enc(x.openid) + "/close", {});
        return "Closed the session of " + who + " with " + name + ".";
      },
    });
  }

  function askReassign(x) {
    const who = shortId(x.openid);
    const from = agentName(x.kf_account);
    const box = el("div");
    const label = el("label", null, "Move to");
    label.htmlFor = "action-to";
    const select = document.createElement("select");
    select.id = "action-to";
    const anyone = el("option", null, "Any agent (the group's routing picks)");
    anyone.value = "";
    select.appendChild(anyone);
    for (const a of snapshot.agents) {
      if (a.kf_account === x.kf_account) continue;
      const opt = el("option", null, (a.nickname || a.kf_account) + " · " + a.status);
      opt.value = a.kf_account;
      select.appendChild(opt);
    }
    select.addEventListener("change", () => ($("action-summary").textContent = summary()));
    box.appendChild(label);
    box.appendChild(select);
    const target = () => select.value || null;
    const summary = () =>
      "The session with " + from + " is closed first; then " + who + " goes to " +
      (target() ? agentName(target()) : "whoever the routing picks") + ".";
    ask({
      action: "reassign",
      title: "Reassign customer " + who + "?",
      fields: [box],
      summary: summary,
      confirm: "Reassign",
      run: async () => {
        const to = target();
        const r = await api("POST", "/api/sessions/" + enc(x.openid) + "/reassign", { to: to });
        if (r.data.status === "unchanged") return agentName(to) + " already serves " + who + ".";
        return (
          "Moving " + who + " from " + from + " to " + (to ? agentName(to) : "the next free agent") +
          ": the session is being closed, then kfrouter routes the customer."
        );
      },
    });
  }

  function askRemove(openid, group) {
    const who = shortId(openid);
    const where = group ? "the " + group + " queue" : "the queue";
    ask({
      action: "remove",
      title: "Remove " + who + " from " + where + "?",
      text: "The customer is not told. If they write again they join the queue again.",
      confirm: "Remove",
      danger: true,
      run: async () => {
        await api("DELETE", "/api/queue/" + enc(openid));
        return "Removed " + who + " from " + where + ".";
      },
    });
  }

  // ---------------------------------------------------------------- buttons, after every render

  function button(action, label, danger, handler) {
    const b = el("button", "act" + (danger ? " danger" : ""), label);
    b.type = "button";
    b.dataset.action = action;
    b.addEventListener("click", handler);
    return b;
  }

  function decorate(s) {
    snapshot = s;
    if (!canAct) return;
    for (const tr of document.querySelectorAll("#agents tr[data-agent]")) {
      const a = s.agents.find((x) => x.kf_account === tr.dataset.agent);
      if (!a) continue;
      const td = el("td", "actions admin-only");
      td.appendChild(button(a.paused ? "resume" : "pause", a.paused ? "Resume" : "Pause", !a.paused, () => askPause(a)));
      td.appendChild(button("edit", "Edit…", false, () => askEdit(a)));
      tr.appendChild(td);
    }
    for (const tr of document.querySelectorAll("#sessions tr[data-openid]")) {
      const x = { openid: tr.dataset.openid, kf_account: tr.dataset.agent };
      const td = el("td", "actions admin-only");
      td.appendChild(button("reassign", "Reassign…", false, () => askReassign(x)));
      td.appendChild(button("close", "Close", true, () => askClose(x)));
      tr.appendChild(td);
    }
    for (const card of document.querySelectorAll("#queues [data-group]")) {
      const g = s.groups.find((x) => x.name === card.dataset.group);
      for (const li of card.querySelectorAll("li[data-openid]")) {
        const openid = li.dataset.openid;
        li.appendChild(button("remove", "Remove", true, () => askRemove(openid, g ? g.name : "")));
      }
    }
  }

  document.addEventListener("kfrouter:rendered", (event) => decorate(event.detail));

  document.addEventListener("DOMContentLoaded", () => {
    if (canAct) document.body.dataset.canAct = "1";
    const dialog = $("action-dialog");
    $("action-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const run = pending;
      pending = null;
      dialog.close();
      if (run) perform(run);
    });
    $("action-cancel").addEventListener("click", () => {
      pending = null;
      dialog.close();
    });
    $("notice-close").addEventListener("click", () => ($("notice").hidden = true));
  });

  window.kfrouterActions = { canAct: canAct };
})();
