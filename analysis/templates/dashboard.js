// The dashboard's behaviour, inlined into the page by analysis/dashboard.py: sort the runs
// table by a column, open a run's details, filter by text, method and status. No libraries.
(function () {
  var table = document.getElementById('runs'), tbody = table.tBodies[0];
  var q = document.getElementById('filter'), fm = document.getElementById('method');
  var fs = document.getElementById('status'), shown = document.getElementById('shown');
  function pairs() {
    return Array.prototype.map.call(tbody.querySelectorAll('tr.run'),
      function (r) { return [r, r.nextElementSibling]; });
  }
  function toggle(r) {
    var d = r.nextElementSibling, open = d.hidden;
    d.hidden = !open; r.classList.toggle('open', open);
    r.setAttribute('aria-expanded', open ? 'true' : 'false');
  }
  tbody.addEventListener('click', function (e) {
    var r = e.target.closest('tr.run'); if (r) toggle(r);
  });
  tbody.addEventListener('keydown', function (e) {
    var r = e.target.closest('tr.run');
    if (r && (e.key === 'Enter' || e.key === ' ')) { e.preventDefault(); toggle(r); }
  });
  var sortIdx = -1, asc = true;
  function sortBy(th) {
    var idx = th.cellIndex, num = th.dataset.type === 'num';
    asc = sortIdx === idx ? !asc : true; sortIdx = idx;
    var rows = pairs();
    rows.sort(function (a, b) {
      var x = a[0].cells[idx].dataset.v, y = b[0].cells[idx].dataset.v;
      if (x === '' || y === '') { return x === y ? 0 : (x === '' ? 1 : -1); }  // blanks last
      var c = num ? parseFloat(x) - parseFloat(y) : x.localeCompare(y);
      return asc ? c : -c;
    });
    rows.forEach(function (p) { tbody.appendChild(p[0]); tbody.appendChild(p[1]); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) {
      h.removeAttribute('aria-sort');
    });
    th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
  }
  table.tHead.addEventListener('click', function (e) {
    var th = e.target.closest('th'); if (th) sortBy(th);
  });
  table.tHead.addEventListener('keydown', function (e) {
    var th = e.target.closest('th'); if (th && e.key === 'Enter') sortBy(th);
  });
  function filter() {
    var text = q.value.trim().toLowerCase(), n = 0, all = pairs();
    all.forEach(function (p) {
      var r = p[0], d = p[1];
      var ok = (!fm.value || r.dataset.method === fm.value) &&
               (!fs.value || r.dataset.status === fs.value) &&
               (!text || (r.textContent + ' ' + d.textContent).toLowerCase().indexOf(text) >= 0);
      r.hidden = !ok; if (!ok) { d.hidden = true; r.classList.remove('open'); }
      if (ok) n++;
    });
    shown.textContent = n + ' of ' + all.length + ' runs shown';
  }
  [q, fm, fs].forEach(function (el) { el.addEventListener('input', filter); });
  filter();
  // A tap on a figure switches it between its drawn size and the width of the screen.
  Array.prototype.forEach.call(document.querySelectorAll('figure img'), function (img) {
    img.addEventListener('click', function () { img.parentNode.classList.toggle('fit'); });
  });
  document.body.dataset.ready = '1';  // lets a headless test tell that the script ran
  window.addEventListener('load', function () {  // and how many figures the browser decoded
    document.body.dataset.images = String(Array.prototype.filter.call(document.images,
      function (im) { return im.complete && im.naturalWidth > 0; }).length);
  });
})();
