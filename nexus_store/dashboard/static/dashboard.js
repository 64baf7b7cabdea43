// nexus-store dashboard: follows /api/events (server-sent events) and renders each state.
// No dependencies, nothing fetched from elsewhere: the page works offline.
(function () {
  "use strict";
  var token = document.body.getAttribute("data-token");
  var q = "?token=" + encodeURIComponent(token);
  var PRIORITIES = ["CRITICAL", "HIGH", "NORMAL", "LOW"];
  var STATES = ["pending", "leased", "dead"];

  function esc(v) {
    return String(v === null || v === undefined ? "" : v).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }
  function when(t) {
    if (t === null || t === undefined) return "-";
    return new Date(t * 1000).toLocaleTimeString();
  }
  function took(s) {
    if (s === null || s === undefined) return "-";
    if (s < 1) return Math.round(s * 1000) + " ms";
    if (s < 120) return s.toFixed(1) + " s";
    return (s / 60).toFixed(1) + " min";
  }
  function age(s) { return s === null || s === undefined ? "none" : took(s); }
  function table(head, rows, empty) {
    if (!rows.length) return '<p class="empty">' + esc(empty) + "</p>";
    return "<table><thead><tr>" + head.map(function (h) {
      return '<th class="' + (h[1] || "") + '">' + esc(h[0]) + "</th>";
    }).join("") + "</tr></thead><tbody>" + rows.join("") + "</tbody></table>";
  }
  function button(target, key, verb, label, cls) {
    return '<button class="' + (cls || "") + '" data-target="' + esc(target) + '" data-key="' +
      esc(key) + '" data-verb="' + esc(verb) + '">' + esc(label) + "</button>";
  }
  function body(id) { return document.querySelector("#" + id + " .body"); }

  function render(s) {
    document.getElementById("path").textContent = s.path;
    var status = document.getElementById("status");
    status.textContent = s.status;
    status.setAttribute("data-status", s.status);
    body("sync").innerHTML =
      "<p>Worker: " + esc(s.worker || "none draining this file") + "</p>" +
      table([["when"], ["status"]], s.transitions.slice(-6).reverse().map(function (t) {
        return "<tr><td>" + when(t[0]) + "</td><td>" + esc(t[1]) + "</td></tr>";
      }), "no transitions yet");
    var qs = s.queue;
    body("queue").innerHTML =
      '<p>Pending <b id="pending">' + qs.pending + "</b> · leased " + qs.leased + " · dead " +
      qs.dead + " · backing off " + qs.backing_off + ' · oldest pending <b id="oldest">' +
      age(qs.oldest_pending_age) + "</b></p>" +
      table([["priority"]].concat(STATES.map(function (x) { return [x, "num"]; })),
        PRIORITIES.map(function (p) {
          return '<tr data-priority="' + p + '"><td>' + p + "</td>" + STATES.map(function (x) {
            return '<td class="num">' + ((qs.counts[p] || {})[x] || 0) + "</td>";
          }).join("") + "</tr>";
        }), "");
    body("transfers").innerHTML = table([["file"], ["direction"], ["state"], ["bytes", "num"]],
      s.transfers.map(function (t) {
        var bytes = t.bytes_total ? (t.bytes_done || 0) + " / " + t.bytes_total : "-";
        return "<tr><td>" + esc(t.name || t.item_id) + "</td><td>" +
          esc(t.direction) + "</td><td>" + esc(t.state) + '</td><td class="num">' + bytes +
          "</td></tr>";
      }), "no transfers in progress");
    body("jobs").innerHTML = table([["job"], ["on"], ["state"], ["next run", "wide"], [""]],
      s.jobs.map(function (j) {
        var toggle = j.enabled ? button("jobs", j.id, "disable", "Disable", "danger")
          : button("jobs", j.id, "enable", "Enable");
        return '<tr data-job="' + esc(j.id) + '"><td title="' + esc(j.description) + '">' +
          esc(j.name) + '<br><small>' + esc(j.id) + "</small></td><td>" +
          (j.enabled ? "yes" : "no") + (j.run_requested ? " (run asked)" : "") + "</td><td>" +
          esc(j.state) + '</td><td class="wide">' + when(j.next_run_at) + "</td><td>" +
          toggle + button("jobs", j.id, "run", "Run now") +
          '<button data-history="' + esc(j.id) + '">History</button></td></tr>';
      }), "no jobs yet");
    body("runs").innerHTML = table([["started"], ["job"], ["outcome"], ["took", "num"],
      ["message", "wide"]], s.runs.map(function (r) {
        return "<tr><td>" + when(r.started_at) + "</td><td>" + esc(r.task_id) +
          '</td><td class="outcome-' + esc(r.outcome) + '">' + esc(r.outcome) +
          '</td><td class="num">' + took(r.duration) + '</td><td class="wide">' +
          esc(r.message) + "</td></tr>";
      }), "no runs yet");
    body("dead").innerHTML = table([["op"], ["reason"], [""]], s.dead.map(function (d) {
      return '<tr data-op="' + esc(d.op_id) + '"><td>' + esc(d.collection + "/" + d.item_id) +
        "<br><small>" + esc(d.priority) + ", " + d.attempts + " attempts</small></td><td>" +
        esc(d.reason) + "</td><td>" + button("dead", d.op_id, "retry", "Retry") +
        button("dead", d.op_id, "discard", "Discard", "danger") + "</td></tr>";
    }), "no dead letters");
    body("quarantine").innerHTML = table([["change"], ["reason"], [""]],
      s.quarantined.map(function (c) {
        return '<tr data-change="' + c.id + '"><td>' + esc(c.collection + "/" + c.item_id) +
          "</td><td>" + esc(c.reason) + "</td><td>" + button("quarantine", c.id, "retry", "Retry") +
          button("quarantine", c.id, "discard", "Discard", "danger") + "</td></tr>";
      }), "nothing quarantined");
  }

  function toast(text) {
    var t = document.getElementById("toast");
    t.textContent = text;
    t.className = "shown";
    clearTimeout(toast.timer);
    toast.timer = setTimeout(function () { t.className = ""; }, 2500);
  }

  function showHistory(job) {
    fetch("api/jobs/" + encodeURIComponent(job) + "/history" + q).then(function (r) {
      return r.json();
    }).then(function (h) {
      var section = document.getElementById("history");
      section.hidden = false;
      document.getElementById("history-job").textContent = job;
      body("history").innerHTML = table([["started"], ["ended", "wide"], ["took", "num"],
        ["outcome"], ["attempt", "num"], ["stop reason", "wide"], ["message"]],
        h.runs.map(function (r) {
          return "<tr><td>" + when(r.started_at) + '</td><td class="wide">' + when(r.ended_at) +
            '</td><td class="num">' + took(r.duration) + '</td><td class="outcome-' +
            esc(r.outcome) + '">' + esc(r.outcome) + '</td><td class="num">' +
            (r.attempt === null ? "-" : r.attempt) + '</td><td class="wide">' +
            esc(r.stop_reason || "-") + "</td><td>" + esc(r.message) + "</td></tr>";
        }), "no runs yet");
    });
  }

  document.addEventListener("click", function (ev) {
    var el = ev.target.closest("button");
    if (!el) return;
    if (el.hasAttribute("data-history")) { showHistory(el.getAttribute("data-history")); return; }
    var url = "api/" + encodeURIComponent(el.getAttribute("data-target")) + "/" +
      encodeURIComponent(el.getAttribute("data-key")) + "/" +
      encodeURIComponent(el.getAttribute("data-verb")) + q;
    el.disabled = true;
    fetch(url, { method: "POST" }).then(function (r) { return r.json(); }).then(function (a) {
      toast(a.message);
    }).catch(function () { toast("the dashboard did not answer"); }).finally(function () {
      el.disabled = false;
    });
  });

  render(JSON.parse(document.getElementById("initial-state").textContent));
  var live = document.getElementById("live");
  var source = new EventSource("api/events" + q);
  source.addEventListener("state", function (ev) {
    render(JSON.parse(ev.data));
    live.textContent = "live";
    live.setAttribute("data-live", "live");
  });
  source.onerror = function () {
    live.textContent = "reconnecting";
    live.setAttribute("data-live", "offline");
  };
})();
