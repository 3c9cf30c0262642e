// Sorting (click or Enter on a column header) and filtering (the text box) of the ranked table.
(function () {
  "use strict";
  var table = document.getElementById("leaderboard");
  if (!table) {
    return;
  }
  var body = table.tBodies[0];
  var headers = Array.prototype.slice.call(table.tHead.rows[0].cells);
  var filter = document.getElementById("filter");
  var count = document.getElementById("count");

  function cellOf(row, key) {
    return row.querySelector('td[data-key="' + key + '"]');
  }

  // A cell's sort key: its number for numeric columns (undefined values last), its text otherwise.
  function keyOf(row, key, numeric) {
    var cell = cellOf(row, key);
    if (!numeric) {
      return cell ? cell.textContent.trim().toLowerCase() : "";
    }
    var value = cell ? parseFloat(cell.getAttribute("data-value")) : NaN;
    return isNaN(value) ? null : value;
  }

  function compare(a, b, descending) {
    if (a === b) {
      return 0;
    }
    if (a === null) {
      return 1;
    }
    if (b === null) {
      return -1;
    }
    var order = a < b ? -1 : 1;
    return descending ? -order : order;
  }

  function sortBy(header) {
    var key = header.getAttribute("data-key");
    var numeric = header.getAttribute("data-type") === "number";
    var descending = header.getAttribute("aria-sort") === "ascending";
    var rows = Array.prototype.slice.call(body.rows).map(function (row, index) {
      return { row: row, key: keyOf(row, key, numeric), index: index };
    });
    rows.sort(function (a, b) {
      return compare(a.key, b.key, descending) || a.index - b.index;
    });
    rows.forEach(function (item) {
      body.appendChild(item.row);
    });
    headers.forEach(function (other) {
      other.setAttribute("aria-sort", "none");
    });
    header.setAttribute("aria-sort", descending ? "descending" : "ascending");
  }

  headers.forEach(function (header) {
    header.addEventListener("click", function () {
      sortBy(header);
    });
    header.addEventListener("keydown", function (event) {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        sortBy(header);
      }
    });
  });

  function applyFilter() {
    var words = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
    var shown = 0;
    Array.prototype.forEach.call(body.rows, function (row) {
      var text = row.textContent.toLowerCase();
      var match = words.every(function (word) {
        return text.indexOf(word) !== -1;
      });
      row.hidden = !match;
      shown += match ? 1 : 0;
    });
    count.textContent = shown + " of " + body.rows.length + " settings";
  }

  if (filter) {
    filter.addEventListener("input", applyFilter);
    applyFilter();
  }
})();
