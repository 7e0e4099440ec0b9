// The requests list's "select all on this page" box: shown only where scripts run (without them the bulk
// bar's "All on this page" choice does the same). Ticking rows also picks "the rows ticked below".
(function () {
  "use strict";
  function boxes() {
    return Array.prototype.slice.call(document.querySelectorAll('input[form="bulk"][name="ids"]'));
  }
  function setup() {
    var all = document.getElementById("bulk-pick-all");
    var selected = document.getElementById("bulk-scope-selected");
    if (!all) { return; }
    all.hidden = false;
    all.addEventListener("change", function () {
      boxes().forEach(function (box) { box.checked = all.checked; });
      if (selected) { selected.checked = true; }
    });
    boxes().forEach(function (box) {
      box.addEventListener("change", function () {
        var list = boxes();
        all.checked = list.length > 0 && list.every(function (b) { return b.checked; });
        if (box.checked && selected) { selected.checked = true; }
      });
    });
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", setup);
  } else {
    setup();
  }
})();
