// pgq-sa dashboard: live refresh (server-sent events, polling fallback), selections, confirms.
// No framework, no build step; loaded with `defer` under a CSP that allows only our own script.
(function () {
  "use strict";
  var POLL_MS = 5000;
  var live = document.getElementById("live");
  var body = document.body;
  var refreshing = false;
  var again = false;
  var pollTimer = null;

  function setLive(state, text) {
    if (!live) return;
    live.className = "live " + state;
    live.textContent = text;
  }

  function selectedIds(root) {
    var ids = [];
    root.querySelectorAll('input[type="checkbox"][name="job"]:checked').forEach(function (box) {
      ids.push(box.value);
    });
    return ids;
  }

  function busy() {
    // Never swap the page under someone typing in a field or choosing from a list.
    var active = document.activeElement;
    return active && (active.tagName === "INPUT" && active.type !== "checkbox" ||
      active.tagName === "SELECT" || active.tagName === "TEXTAREA");
  }

  function refresh() {
    if (refreshing) { again = true; return; }
    if (busy()) { again = true; setTimeout(refresh, 1000); return; }
    refreshing = true;
    fetch(window.location.href, { headers: { "X-Requested-With": "pgq-sa-live" }, credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.text();
      })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html");
        document.querySelectorAll("[data-live][id]").forEach(function (old) {
          var replacement = fresh.getElementById(old.id);
          if (!replacement) return;
          var keep = selectedIds(old);
          var open = [];
          old.querySelectorAll("details").forEach(function (d, i) { open.push(d.open); });
          old.replaceWith(replacement);
          replacement.querySelectorAll('input[type="checkbox"][name="job"]').forEach(function (box) {
            box.checked = keep.indexOf(box.value) >= 0;
          });
          replacement.querySelectorAll("details").forEach(function (d, i) {
            if (i < open.length) d.open = open[i];
          });
        });
        wire(document);
      })
      .catch(function () { /* the next change or poll tries again */ })
      .then(function () {
        refreshing = false;
        if (again) { again = false; refresh(); }
      });
  }

  function startPolling() {
    if (pollTimer) return;
    setLive("polling", "polling");
    pollTimer = setInterval(refresh, POLL_MS);
  }

  function stopPolling() {
    if (pollTimer) { clearInterval(pollTimer); pollTimer = null; }
  }

  function connect() {
    if (!body.hasAttribute("data-live-page")) return;
    if (!window.EventSource) { startPolling(); return; }
    var failures = 0;
    var source = new EventSource(body.getAttribute("data-events"));
    source.addEventListener("hello", function () {
      failures = 0;
      stopPolling();
      setLive("on", "live");
    });
    source.addEventListener("change", function () { refresh(); });
    source.onerror = function () {
      failures += 1;
      if (failures >= 2 || source.readyState === EventSource.CLOSED) startPolling();
    };
  }

  function updateSelection(root) {
    var form = document.getElementById("bulk");
    if (!form) return;
    var count = selectedIds(document).length;
    form.querySelectorAll("[data-needs-selection]").forEach(function (button) {
      button.disabled = count === 0;
    });
    var label = form.querySelector("[data-selection]");
    if (label) label.textContent = count ? count + " selected" : "none selected";
  }

  function wire(root) {
    root.querySelectorAll("form[data-confirm]").forEach(function (form) {
      if (form.dataset.wired) return;
      form.dataset.wired = "1";
      form.addEventListener("submit", function (event) {
        if (!window.confirm(form.getAttribute("data-confirm"))) event.preventDefault();
      });
    });
    root.querySelectorAll("[data-select-all]").forEach(function (all) {
      if (all.dataset.wired) return;
      all.dataset.wired = "1";
      all.addEventListener("change", function () {
        document.querySelectorAll('input[type="checkbox"][name="job"]').forEach(function (box) {
          box.checked = all.checked;
        });
        updateSelection(document);
      });
    });
    root.querySelectorAll('input[type="checkbox"][name="job"]').forEach(function (box) {
      if (box.dataset.wired) return;
      box.dataset.wired = "1";
      box.addEventListener("change", function () { updateSelection(document); });
    });
    updateSelection(root);
  }

  wire(document);
  connect();
})();
