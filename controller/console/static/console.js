// vfence console: the one script of our own (no inline scripts: the CSP allows none).
// The live badge says when the event stream is down; when it is down because the session
// ended (the stream's reconnects get 401), the whole page goes to the token form.
(function () {
  function badge(text, ok) {
    document.querySelectorAll('[data-live]').forEach(function (el) {
      el.textContent = text;
      el.classList.toggle('down', !ok);
    });
  }
  document.addEventListener('htmx:sseOpen', function () { badge('Live', true); });
  document.addEventListener('htmx:sseError', function () {
    badge('Reconnecting…', false);
    fetch(location.href, {headers: {'HX-Request': 'true'}, redirect: 'manual'})
      .then(function (r) {
        var to = r.headers.get('HX-Redirect');
        if (r.status === 401 && to) location.href = to;
      })
      .catch(function () {});
  });
})();
