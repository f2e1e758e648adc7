// Sorting and filtering of the leaderboard tables; no library, works from file://.
"use strict";

function sortKey(cell, numeric) {
  const raw = cell.dataset.sort;
  if (!numeric) return raw.toLowerCase();
  return raw === "" ? null : parseFloat(raw);
}

function sortBy(table, header) {
  const column = Number(header.dataset.col);
  const numeric = header.dataset.type === "num";
  // Numbers sort high to low first (best models on top), text A to Z; a second click reverses.
  const current = header.getAttribute("aria-sort");
  const first = numeric ? "descending" : "ascending";
  const order = current === first ? (first === "ascending" ? "descending" : "ascending") : first;
  for (const other of table.tHead.rows[0].cells) other.setAttribute("aria-sort", "none");
  header.setAttribute("aria-sort", order);
  const sign = order === "ascending" ? 1 : -1;
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  rows.sort((a, b) => {
    const x = sortKey(a.cells[column], numeric), y = sortKey(b.cells[column], numeric);
    if (x === null || y === null) return (x === null) - (y === null);  // missing values last, either way
    return x < y ? -sign : x > y ? sign : 0;
  });
  for (const row of rows) body.appendChild(row);
}

function applyFilters(table) {
  const arch = document.getElementById("arch-filter").value;
  const text = document.getElementById("text-filter").value.trim().toLowerCase();
  const rows = Array.from(table.tBodies[0].rows);
  let shown = 0;
  for (const row of rows) {
    const visible = (!arch || row.dataset.arch === arch) && (!text || row.textContent.toLowerCase().includes(text));
    row.hidden = !visible;
    shown += visible;
  }
  document.getElementById("shown").value = `${shown} of ${rows.length} models`;
}

for (const table of document.querySelectorAll("table.board")) {
  for (const header of table.tHead.rows[0].cells) {
    header.addEventListener("click", () => sortBy(table, header));
    header.addEventListener("keydown", (event) => { if (event.key === "Enter") sortBy(table, header); });
  }
  for (const id of ["arch-filter", "text-filter"]) {
    for (const event of ["input", "change"]) {  // a select fires change; some drivers do not fire input
      document.getElementById(id).addEventListener(event, () => applyFilters(table));
    }
  }
}
