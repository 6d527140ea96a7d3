// Vigil fleet console. The pages work without script; this only asks for
// confirmation before destructive actions (buttons with data-confirm).
"use strict";
document.addEventListener("click", function (ev) {
  var b = ev.target.closest("button[data-confirm]");
  if (b && !window.confirm(b.getAttribute("data-confirm"))) {
    ev.preventDefault();
  }
});
