// tollgate console: the only script. Every page works without it; it adds the viewer's time
// zone (a cookie the server formats times with), copy buttons and confirmations.
(function () {
  "use strict";
  var offset = -new Date().getTimezoneOffset();
  if (document.cookie.indexOf("tg_tz=" + offset) === -1) {
    document.cookie = "tg_tz=" + offset + "; Path=/console; Max-Age=31536000; SameSite=Strict";
  }
  // A change's confirmation (?done=...) is shown once: a reload does not show it again.
  if (window.history && history.replaceState && /[?&]done=/.test(location.search)) {
    var q = location.search.replace(/([?&])done=[^&]*&?/, "$1").replace(/[?&]$/, "");
    history.replaceState(null, "", location.pathname + q + location.hash);
  }
  document.addEventListener("click", function (e) {
    var b = e.target.closest("button.copy");
    if (b) {
      var el = document.getElementById(b.getAttribute("data-copy"));
      if (el && navigator.clipboard) {
        navigator.clipboard.writeText(el.textContent.trim()).then(function () {
          b.classList.add("done");
        }, function () {});
      }
      return;
    }
    var c = e.target.closest("button[data-confirm]");
    if (c && !window.confirm(c.getAttribute("data-confirm"))) {
      e.preventDefault();
    }
  });
})();
