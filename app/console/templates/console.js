// The live feed: each server-sent "emit" is an <li> rendered (and escaped) by the server.
(function () {
  "use strict";
  var feed = document.getElementById("feed");
  var status = document.getElementById("status");
  if (!feed || !window.EventSource) { return; }
  var keep = parseInt(feed.getAttribute("data-keep"), 10) || 200;
  var source = new EventSource(feed.getAttribute("data-stream"));
  function show(state, text) { status.setAttribute("data-state", state); status.textContent = text; }
  source.onopen = function () { show("live", "live"); };
  source.onerror = function () { show("off", "reconnecting"); };
  source.addEventListener("emit", function (message) {
    var empty = document.getElementById("empty");
    if (empty) { empty.remove(); }
    feed.insertAdjacentHTML("afterbegin", message.data);
    while (feed.children.length > keep) { feed.lastElementChild.remove(); }
  });
})();
