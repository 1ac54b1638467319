(function () {
  // Graph drawings (svg.mg): a click on a node (.gn, data-id) selects it, dims every edge but its own
  // (line data-s / data-t) and shows its card (id "<svg id>-card-<node id>"); a click on the background clears.
  document.querySelectorAll('svg.mg').forEach(function (svg) {
    svg.addEventListener('click', function (ev) {
      var g = ev.target.closest('.gn');
      svg.querySelectorAll('.gn.sel').forEach(function (x) { x.classList.remove('sel'); });
      svg.querySelectorAll('line.on').forEach(function (x) { x.classList.remove('on'); });
      document.querySelectorAll('[id^="' + svg.id + '-card-"].show').forEach(function (x) { x.classList.remove('show'); });
      if (!g) { svg.classList.remove('focus'); return; }
      var id = g.getAttribute('data-id');
      g.classList.add('sel');
      svg.classList.add('focus');
      svg.querySelectorAll('line[data-s="' + id + '"],line[data-t="' + id + '"]').forEach(function (x) { x.classList.add('on'); });
      var card = document.getElementById(svg.id + '-card-' + id);
      if (card) card.classList.add('show');
    });
  });
})();
