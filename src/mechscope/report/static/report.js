(function () {
  var box = document.getElementById('latent-search');
  var count = document.getElementById('latent-count');
  var cards = Array.prototype.slice.call(document.querySelectorAll('#latents .latent'));
  function matches(card, q) {
    if (!q) return true;
    var m = q.match(/^#?(\d+)$/);
    if (m && card.getAttribute('data-latent') === m[1]) return true;
    if (q.charAt(0) === '#') return false;
    return (card.getAttribute('data-text') || '').indexOf(q) >= 0;
  }
  function apply(raw) {
    var q = (raw || '').trim().toLowerCase(), shown = 0;
    cards.forEach(function (c) { var ok = matches(c, q); c.hidden = !ok; if (ok) shown++; });
    count.textContent = shown + ' of ' + cards.length + ' latents shown';
    document.body.setAttribute('data-shown', String(shown));
  }
  function fromHash() {
    var m = location.hash.match(/[#&]q=([^&]*)/);
    return m ? decodeURIComponent(m[1].replace(/\+/g, ' ')) : '';
  }
  if (box) {
    box.addEventListener('input', function () {
      apply(box.value);
      history.replaceState(null, '', '#q=' + encodeURIComponent(box.value));
    });
    window.addEventListener('hashchange', function () { box.value = fromHash(); apply(box.value); });
    box.value = fromHash();
    apply(box.value);
    // A shared link with a query should open on the dashboards it filters.
    if (box.value) { var sec = document.getElementById('latents'); if (sec) sec.scrollIntoView(); }
  }
  document.body.setAttribute('data-ready', '1');
})();
