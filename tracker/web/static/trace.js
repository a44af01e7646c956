// The trace page refreshes its live part every 2 s until the trace is done, keeping open
// whatever the person expanded (the <details> by event id). Same-origin fetch: the cookie goes
// along; the script never sees the token.
(function () {
  var live = document.getElementById("live");
  if (!live) return;
  function done() {
    var head = document.getElementById("head");
    return head && head.getAttribute("data-done") === "true";
  }
  function refresh() {
    if (done()) return;
    fetch(live.getAttribute("data-live"), { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html === null) return;
        // What is open now, not when the request left: one opened meanwhile stays open.
        var open = {};
        live.querySelectorAll("details[open]").forEach(function (d) { open[d.getAttribute("data-key")] = true; });
        live.innerHTML = html;
        live.querySelectorAll("details").forEach(function (d) {
          if (open[d.getAttribute("data-key")]) d.open = true;
        });
      })
      .catch(function () {})
      .then(function () { setTimeout(refresh, 2000); });
  }
  setTimeout(refresh, 2000);
})();
